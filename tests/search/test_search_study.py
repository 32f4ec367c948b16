"""The study side without a cluster: which trials count, orphans after a restore, reruns, the
front against Optuna's best_trials, and `vlpuda pareto` from a run dir."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from vlpuda.cli import main
from vlpuda.config import TrainConfig, build_config
from vlpuda.front.pareto import hypervolume_2d
from vlpuda.front.table import format_front
from vlpuda.front.trials import front_of
from vlpuda.layout import write_manifest
from vlpuda.objectives import DIRECTIONS, EXPERIMENT, trial_outcome
from vlpuda.search.searcher import ParetoOptunaSearch
from vlpuda.search.stopping import StoredParamsBudget
from vlpuda.search.study import (
    experiment_counts,
    fail_running_trials,
    make_sampler,
    new_experiment_name,
)
from vlpuda.spaces import build_space
from vlpuda.trainables.params import apply_params, trainer_params

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = build_space("cmkd_rst", {"lr": {"low": 1e-4, "high": 1e-2}})
FULL = {"epoch": 3, "target_acc": 80.0, "stored_params": 1000, "target_acc_last": 79.0}


def searcher(storage: str, experiment: str = "exp", **kwargs) -> ParetoOptunaSearch:
    return ParetoOptunaSearch(SPACE, full_epochs=3, experiment=experiment,
                              stored_params_budget=5000,
                              sampler=optuna.samplers.RandomSampler(seed=0), study_name="s",
                              storage=optuna.storages.RDBStorage(storage), **kwargs)


@pytest.mark.parametrize("result, error, expected", [
    (FULL, False, (TrialState.COMPLETE, "complete")),
    ({**FULL, "epoch": 1}, False, (TrialState.PRUNED, "early_stopping")),
    ({**FULL, "stored_params": 6000}, False, (TrialState.PRUNED, "stored_params_budget")),
    (FULL, True, (TrialState.FAIL, "error")),  # partial metrics of an errored trial never count
    ({"epoch": 3, "target_acc": 80.0}, False, (TrialState.FAIL, "no metrics")),
])
def test_trial_outcome(result, error, expected):
    assert trial_outcome(result, error, full_epochs=3, budget=5000) == expected


def test_only_full_length_trials_complete_and_defaults_come_first(tmp_path):
    defaults = SPACE.defaults_point({"lr": 1e-3, "lr_multiplier": 1000, "lambda1": 0.25})
    search = searcher(f"sqlite:///{tmp_path}/s.db", points_to_evaluate=[defaults])
    first = search.suggest("t0")
    assert {k: first[k] for k in defaults} == pytest.approx(defaults)
    assert first["rst"] is True and "rst_threshold" in first  # constants and derived tau
    for trial_id in ("t1", "t2"):
        search.suggest(trial_id)
    search.on_trial_complete("t0", FULL)
    search.on_trial_complete("t1", {**FULL, "epoch": 2})  # e.g. stopped by ASHA
    search.on_trial_complete("t2", FULL, error=True)
    states = [(t.state, t.user_attrs.get("stopped_by")) for t in search.study.trials]
    assert states == [(TrialState.COMPLETE, None), (TrialState.PRUNED, "early_stopping"),
                      (TrialState.FAIL, "error")]
    assert search.study.trials[0].user_attrs["tune_trial_id"] == "t0"
    assert search.study.trials[0].values == [80.0, 1000.0]


def test_restore_fails_orphans_and_skips_trials_the_database_finished(tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    search = searcher(storage)
    search.suggest("a")
    search.suggest("b")
    search.save(str(tmp_path / "snapshot.pkl"))
    search.suggest("c")  # asked after the snapshot: lost with the driver
    search.on_trial_complete("a", FULL)  # finished after the snapshot
    searcher(storage, experiment="other").suggest("z")  # another search on the same study

    restored = searcher(storage)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    states = {t.number: t.state for t in restored.study.trials}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.RUNNING, 2: TrialState.FAIL,
                      3: TrialState.RUNNING}
    assert restored.orphans_failed == [2]
    # Marked as no trial Tune ran: the end-of-search summary does not count it as finished.
    assert restored.study.trials[2].user_attrs["stopped_by"] == "orphaned"
    counts = experiment_counts(restored.study, restored.study.trials[0].user_attrs[EXPERIMENT])
    assert (counts["COMPLETE"], counts["RUNNING"], counts["FAIL"], counts["orphaned"]) \
        == (1, 1, 0, 1)
    restored.on_trial_complete("a", FULL)  # told again by the resumed run: no error, no change
    restored.on_trial_complete("b", {**FULL, "target_acc": 70.0})
    assert [t.state for t in restored.study.trials] == [
        TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING]


def test_a_trial_asked_but_not_yet_annotated_is_an_orphan_of_the_running_experiment(tmp_path):
    # A driver killed between Optuna creating a trial and tagging it with the experiment leaves
    # a RUNNING trial without the tag; it is claimed by the experiment that started before it.
    experiment = new_experiment_name()
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", directions=DIRECTIONS)
    untagged = study.ask().number
    tagged_elsewhere = study.ask()
    tagged_elsewhere.set_user_attr("tune_experiment", "tune-20000101-000000")
    # An experiment that started after the untagged trial does not claim it.
    assert fail_running_trials(study, "tune-20991231-235959", untagged=True) == []
    assert fail_running_trials(study, experiment) == []  # only after a crash
    assert fail_running_trials(study, experiment, untagged=True) == [untagged]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING]


def test_a_failed_trial_that_succeeds_on_resume_is_recorded_again(tmp_path):
    search = searcher(f"sqlite:///{tmp_path}/s.db")
    search.suggest("x")
    search.on_trial_complete("x", error=True)
    search.on_trial_complete("x", FULL)  # resume_errored ran it again
    failed, rerun = search.study.trials
    assert (failed.state, rerun.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert rerun.params == failed.params and rerun.user_attrs["rerun_of"] == failed.number


@pytest.mark.parametrize("name, sampler", [("tpe", optuna.samplers.TPESampler),
                                           ("nsga2", optuna.samplers.NSGAIISampler),
                                           ("random", optuna.samplers.RandomSampler),
                                           ("gp", optuna.samplers.GPSampler)])
def test_samplers_by_name(name, sampler):
    assert isinstance(make_sampler(name, seed=0, num_samples=16), sampler)


def test_budget_stopper():
    stop = StoredParamsBudget(1000)
    assert stop("t", {"stored_params": 1001}) and not stop("t", {"stored_params": 1000})
    assert not stop.stop_all()


def test_dense_space_gives_a_valid_dense_trainer_config():
    dense = build_space("cmkd")
    params = dense.lowest_point()
    config = dense(optuna.trial.FixedTrial(params))
    cfg, _ = build_config({})
    applied = apply_params(cfg.model_copy(update={"rst": True}), config)
    assert applied.rst is False and applied.lr == params["lr"]
    assert trainer_params({**config, "search_only": 1}) == {
        k: v for k, v in config.items() if k in TrainConfig.model_fields}


def synthetic_study(storage: str) -> optuna.Study:
    study = optuna.create_study(study_name="synthetic", storage=storage, directions=DIRECTIONS)
    rng = np.random.default_rng(0)
    dist = SPACE.optuna_distributions()
    params = SPACE.lowest_point()
    for i in range(40):
        state = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL][i % 5 % 3]
        values = [float(rng.uniform(50, 95)), float(rng.integers(1e3, 1e6))]
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dist, state=state,
            values=values if state == TrialState.COMPLETE else None))
    study.enqueue_trial({})  # a WAITING trial must not confuse anything
    return study


def test_front_is_optunas_best_trials_with_hypervolume(tmp_path):
    study = synthetic_study(f"sqlite:///{tmp_path}/s.db")
    front = front_of(study.get_trials(deepcopy=False))
    assert sorted(front.numbers) == sorted(t.number for t in study.best_trials)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert front.reference == (0.0, 1.1 * max(t.values[1] for t in complete))
    points = [t.values for t in front.trials]
    assert front.hypervolume == pytest.approx(
        hypervolume_2d(points, DIRECTIONS, front.reference))
    accuracies = [t.values[0] for t in front.trials]
    assert accuracies == sorted(accuracies, reverse=True)
    assert "non-dominated of" in format_front(front)


def test_pareto_command_reads_the_run_dir(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = synthetic_study(storage)
    write_manifest(tmp_path, {"name": "synthetic", "study_name": "synthetic",
                              "storage": storage})
    assert main(["pareto", str(tmp_path), "--all"]) == 0
    out = capsys.readouterr().out
    for t in study.best_trials:
        assert f"\n  {t.number:>5}  " in out
    assert "hypervolume" in out and "PRUNED" in out

    assert main(["pareto", str(tmp_path / "nothing")]) == 2
    assert "not a search run directory" in capsys.readouterr().err
