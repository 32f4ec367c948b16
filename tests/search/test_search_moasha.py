"""A real search (local Ray, Optuna, MLflow) with early_stopping.method: moasha and the ladder.

The study is seeded so the outcome at the first rung does not depend on the sampler: a trial that
learns arrives first, then one whose learning rate is too small to learn anything. With eta 3 a
rung of two keeps one, so MOASHA stops the second (it is less accurate; storing fewer parameters
does not save it at N = 2, where only rank 0 continues).
"""

from __future__ import annotations

import csv
import json

import pytest
from optuna.trial import TrialState

from helpers import FROZEN, LEARNS
from search_helpers import run_study, seeded_search
from vlpuda.cli import main

EPOCHS = 2


@pytest.mark.slow
def test_moasha_prunes_and_the_front_holds_full_trials_and_ladder_points(
        ray_session, tiny_assets, tmp_path, capsys):
    search = {"name": "moasha", "num_samples": 3, "max_concurrent_trials": 1,
              "early_stopping": {"method": "moasha", "grace_period": 1, "reduction_factor": 3},
              "sparsity_ladder": 2}
    config, run_dir = seeded_search(tiny_assets, tmp_path, search, (LEARNS, FROZEN), EPOCHS)

    assert main(["search", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "early stopping: MOASHA, Pareto rank over target_acc and stored_params" in out

    study = run_study(run_dir)
    learns, frozen, _third = study.trials
    assert learns.state == TrialState.COMPLETE
    assert frozen.state == TrialState.PRUNED and frozen.user_attrs["epoch"] == 1
    assert frozen.user_attrs["stopped_at"].startswith("moasha rung 1: 2nd of 2")
    assert "stopped early after epoch 1/2: moasha rung 1" in out
    for trial in study.trials:  # short of the full epochs means PRUNED, never COMPLETE
        assert (trial.user_attrs["epoch"] < EPOCHS) == (trial.state == TrialState.PRUNED)
        assert (LADDER_KEY in trial.user_attrs) == (trial.state == TrialState.COMPLETE)

    # The ladder: nested cuts of the complete trial's delta, halving its changed weights.
    ladder = learns.user_attrs[LADDER_KEY]
    assert [p["fraction"] for p in ladder] == [0.5, 0.25]
    changed = learns.values[1] - (ladder[0]["stored_params"] - ladder[0]["changed_params"])
    assert [p["changed_params"] for p in ladder] == [int(changed) // 2, int(changed) // 4]

    # front.csv: full-length trials, then ladder points marked with parent trial and fraction.
    with open(run_dir / "front.csv") as handle:
        rows = list(csv.DictReader(handle))
    complete = {t.number for t in study.trials if t.state == TrialState.COMPLETE}
    trial_rows = [r for r in rows if r["trial"]]
    ladder_rows = [r for r in rows if not r["trial"]]
    assert trial_rows and {int(r["trial"]) for r in trial_rows} <= complete
    assert frozen.number not in {int(r["trial"]) for r in trial_rows}
    for row in ladder_rows:
        assert int(row["parent_trial"]) in complete and float(row["fraction"]) in (0.5, 0.25)
    assert "sparsity-ladder point" in out or not ladder_rows

    # MLflow's parent: the scheduler that ran and why the pruned trial stopped.
    import mlflow

    from vlpuda.tracking.where import read_destination

    client = mlflow.MlflowClient(read_destination(run_dir).uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    parent = next(r for r in client.search_runs(experiments)
                  if "search.scheduler" in r.data.params)
    assert parent.data.params["search.scheduler"] == "moasha"
    local = client.download_artifacts(parent.info.run_id, "pareto/summary.json", str(tmp_path))
    summary = json.loads(open(local).read())
    assert summary["pruned"][str(frozen.number)].startswith("moasha rung 1")
    assert len(summary["ladder_points"]) == len(ladder_rows)


LADDER_KEY = "ladder"
