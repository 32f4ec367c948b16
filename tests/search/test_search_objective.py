"""search.objective: its default, per-task target kinds, the one place its keys come from, and
the selection gap a label-free front reports against the oracle."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution

from search_helpers import tiny_preset
from vlpuda.errors import ConfigError
from vlpuda.front.gap import selection_gap
from vlpuda.front.trials import front_of
from vlpuda.objectives import DEFAULT_LABEL_FREE, OBJECTIVE
from vlpuda.search.plan import build_plan
from vlpuda.search.stopping import make_scheduler


def plan_of(preset):
    return build_plan(preset, check_paths=False)


def test_objective_defaults_to_oracle_or_label_free(tiny_unlabeled_assets, tmp_path):
    labelled = tiny_preset(tiny_unlabeled_assets, tmp_path, {"num_samples": 2})
    plan = plan_of(labelled)
    assert plan.objective == "target_acc" and plan.tasks[0].selection == "target_acc"
    assert plan.objectives == (("target_acc", "stored_params"), ("max", "min"))

    unlabeled = tiny_preset(tiny_unlabeled_assets, tmp_path, {"num_samples": 2},
                            tgt="ClipartFlat", unlabeled_target=True)
    plan = plan_of(unlabeled)
    assert plan.objective == DEFAULT_LABEL_FREE
    assert plan.objectives[0] == (f"{DEFAULT_LABEL_FREE}_best", "stored_params")
    # Each trial keeps the epoch the objective picks, whatever the preset's selection said.
    assert all(task.selection == DEFAULT_LABEL_FREE for task in plan.tasks)


def test_asha_ranks_by_the_search_objective(tiny_unlabeled_assets, tmp_path):
    preset = tiny_preset(tiny_unlabeled_assets, tmp_path,
                         {"num_samples": 2, "objective": "proxy_im",
                          "early_stopping": {"asha": True}}, epochs=4)
    scheduler = make_scheduler(plan_of(preset))
    assert (scheduler._metric, scheduler._mode) == ("proxy_im_best", "max")


def test_per_task_unlabeled_target_refuses_the_oracle(tiny_unlabeled_assets, tmp_path):
    tasks = [["Art", "Clipart"], {"src": "Art", "tgt": "ClipartFlat", "unlabeled_target": True}]
    preset = tiny_preset(tiny_unlabeled_assets, tmp_path, {"num_samples": 2, "tasks": tasks})
    plan = plan_of(preset)
    assert plan.objective == DEFAULT_LABEL_FREE
    assert [t.unlabeled_target for t in plan.tasks] == [False, True]
    preset["search"]["objective"] = "target_acc"
    with pytest.raises(ConfigError) as err:
        plan_of(preset)
    assert err.value.problems == [
        "search.objective: target_acc needs target labels, but the target is unlabeled "
        f"(unlabeled_target: true); use a label-free validator such as {DEFAULT_LABEL_FREE}, "
        "or target_acc_holdout with target_holdout_list"]


@pytest.mark.parametrize("objective, message", [
    ("proxy_nonsense", "search.objective: 'proxy_nonsense' is not a selection metric"),
    ("target_acc_holdout", "search.objective: target_acc_holdout needs target_holdout_list"),
    ("proxy_source_acc", "search.objective: proxy_source_acc needs a held-out source slice"),
])
def test_unscorable_objectives_are_named(tiny_unlabeled_assets, tmp_path, objective, message):
    preset = tiny_preset(tiny_unlabeled_assets, tmp_path,
                         {"num_samples": 2, "objective": objective})
    with pytest.raises(ConfigError) as err:
        plan_of(preset)
    assert any(p.startswith(message) for p in err.value.problems), err.value.problems


def trial(number, score, stored, oracle, selected):
    return optuna.trial.create_trial(
        values=[score, stored], params={"lr": 1e-3}, distributions={"lr": FloatDistribution(
            1e-4, 1e-2)}, user_attrs={OBJECTIVE: "proxy_snd_best", "target_acc": oracle,
                                      "target_acc_selected": selected})


def test_selection_gap_of_a_label_free_front():
    trials = [trial(0, 3.0, 100, 90.0, 80.0),  # best SND: the label-free pick, 80 %
              trial(1, 2.0, 50, 95.0, 94.0),   # the oracle's best, 95 %
              trial(2, 1.0, 200, 85.0, 85.0)]  # dominated in (SND, stored)
    for t in trials:
        t.number = t._number = trials.index(t)
    front = front_of(trials)
    assert sorted(front.numbers) == [0, 1]
    assert front.metrics == ("proxy_snd_best", "stored_params")
    gap = front.gap
    assert gap.gap == pytest.approx(95.0 - 80.0)
    # Reference (0, 220). Oracle front {(95, 50)} (it dominates (90, 100) and (85, 200)):
    # 95 x 170. Label-free front at true accuracy {(80, 100), (94, 50)}: (94, 50) dominates,
    # 94 x 170. Ratio 94 / 95.
    assert gap.hypervolume_ratio == pytest.approx(94 / 95)
    unlabeled = [optuna.trial.create_trial(values=[1.0, 10], user_attrs={OBJECTIVE: "x"})]
    assert selection_gap(unlabeled, unlabeled) is None
