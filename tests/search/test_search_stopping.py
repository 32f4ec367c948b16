"""Early stopping: trials ended by ASHA or by the storage budget are PRUNED, never on the front.

The study is seeded with three trials in a known order, so the outcome does not depend on the
sampler: one that learns (stores a few hundred parameters), one with a learning rate too small to
learn anything (ASHA stops it at the first rung; it stores the fewest parameters, so as a
'complete' trial it would sit on the front), and a dense one (over the storage budget).
"""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from helpers import DENSE, FROZEN, LEARNS
from search_helpers import (
    printed_front,
    run_study,
    seeded_search,
    tune_trials,
)
from vlpuda.cli import main

BUDGET = 10_000  # the dense trial stores ~27k after one epoch, the others a few hundred
EPOCHS = 4


@pytest.mark.slow
def test_asha_and_budget_stops_are_pruned_and_off_the_front(ray_session, tiny_assets, tmp_path,
                                                            capsys):
    search = {
        "name": "stopping",
        "num_samples": 3,
        "max_concurrent_trials": 1,  # ASHA's first rung then sees the learning trial first
        "early_stopping": {"asha": True, "grace_period": 1, "reduction_factor": 2},
        "stored_params_budget": BUDGET,
    }
    config, run_dir = seeded_search(tiny_assets, tmp_path, search, (LEARNS, FROZEN, DENSE),
                                    EPOCHS)

    assert main(["search", "--config", str(config)]) == 0
    out = capsys.readouterr().out

    study = run_study(run_dir)
    learns, frozen, dense = study.trials
    assert learns.state == TrialState.COMPLETE
    assert (frozen.state, frozen.user_attrs["stopped_by"]) == (TrialState.PRUNED, "early_stopping")
    assert (dense.state, dense.user_attrs["stopped_by"]) == (TrialState.PRUNED,
                                                             "stored_params_budget")
    epochs_run = {t.number: t.user_attrs["epoch"] for t in study.trials}
    assert epochs_run == {learns.number: EPOCHS, frozen.number: 1, dense.number: 1}
    last_epochs = sorted(t.last_result["epoch"] for t in tune_trials(run_dir).values())
    assert last_epochs == [1, 1, EPOCHS]

    assert [t.number for t in study.best_trials] == [learns.number]
    assert printed_front(out) == [learns.number]
    assert "stopped early after epoch 1/4: asha rung 1: 2nd of 2 by target_acc" in out
    assert "exceed the budget" in out
    assert frozen.user_attrs["stopped_at"].startswith("asha rung 1: 2nd of 2")
