"""Trial labels and run names (vlpuda.naming), against hand-written expectations."""

from __future__ import annotations

import optuna

from vlpuda.naming import TrialNumbers, compact_count, finished_run_name, trial_label

OBJECTIVES = ("target_acc", "stored_params")


def test_labels_and_counts():
    assert trial_label(3) == "t03"
    assert trial_label(123) == "t123"
    assert trial_label(None, "ab12_00001") == "trial ab12_00001"
    assert [compact_count(v) for v in (812, 3929, 35_210, 499_400, 1_204_000, 86e6)] == \
        ["812", "3.93k", "35.2k", "499k", "1.20M", "86.0M"]


def test_finished_names_say_the_result_or_the_fate():
    last = {"target_acc": 95.06, "stored_params": 499_400}
    assert finished_run_name("t03", "COMPLETE", "complete", last, OBJECTIVES) == \
        "t03 · 95.1 % · 499k"
    assert finished_run_name("t04", "PRUNED", "early_stopping", last, OBJECTIVES) == \
        "t04 · pruned (early_stopping)"
    assert finished_run_name("t05", "FAIL", "error", {}, OBJECTIVES) == "t05 · failed"
    # A label-free first objective is a score, not a percentage.
    assert finished_run_name("t06", "COMPLETE", "", {"proxy_im": 0.4312, "stored_params": 900},
                             ("proxy_im", "stored_params")) == "t06 · 0.431 · 900"


def test_numbers_come_from_the_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage,
                                directions=["maximize", "minimize"])
    for tune_id in ("aa_00000", "aa_00001"):
        study.ask().set_user_attr("tune_trial_id", tune_id)
    numbers = TrialNumbers(storage, "s")
    assert numbers.number("aa_00001") == 1 and numbers.number("aa_00000") == 0
    assert numbers.number("unknown") is None
    assert TrialNumbers("", "s").number("aa_00000") is None  # lookup off
    assert TrialNumbers(f"sqlite:///{tmp_path / 'missing' / 'x.db'}", "s").number("a") is None
