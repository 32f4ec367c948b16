"""End to end on a real local Ray with real Optuna: trials on 2 DDP workers over two transfer
tasks, the printed front is the study's Pareto front, and the first trial trains the preset's
defaults."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search_helpers import dominates, printed_front, run_study, tiny_preset, tune_trials, \
    write_preset
from vlpuda.cli import main


@pytest.mark.slow
def test_ddp_search_prints_the_study_front_with_defaults_first(ray_session, tiny_assets,
                                                               tmp_path, capsys):
    run_dir = tmp_path / "run"
    search = {"num_samples": 2, "workers_per_trial": 2, "tasks": [["Art", "Clipart"],
                                                                   ["Clipart", "Art"]]}
    preset = tiny_preset(tiny_assets, run_dir, search)
    config = write_preset(tmp_path / "ddp.yaml", preset)

    assert main(["search", "--config", str(config)]) == 0
    out = capsys.readouterr().out

    study = run_study(run_dir)
    assert study.study_name == "ddp"  # named after the preset file
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    # The first trial is the preset's own (paper) setting; tau/lr is derived from its tau.
    assert study.trials[0].params == pytest.approx({
        "lr": 1e-3, "lr_multiplier": 10, "lambda1": 0.25, "lambda2": 0.1, "lambda3": 0.025,
        "label_smoothing": 0.1, "rst_threshold_over_lr": 0.1})

    front = printed_front(out)
    assert sorted(front) == sorted(t.number for t in study.best_trials)
    values = {t.number: t.values for t in study.trials}
    for a, b in itertools.permutations(front, 2):
        assert not dominates(values[a], values[b])
    assert "hypervolume" in out

    trials = tune_trials(run_dir)
    assert len(trials) == 2
    for trial in trials.values():
        result = trial.last_result
        assert (trial.status, result["epoch"]) == ("TERMINATED", 1)
        assert result["workers"] == 2  # each trial trained on 2 DDP workers
        # ... on both tasks: the objectives are their mean accuracy and summed storage
        forward, backward = (result[f"{task}/target_acc"]
                             for task in ("Art_to_Clipart", "Clipart_to_Art"))
        assert result["target_acc"] == pytest.approx((forward + backward) / 2)
        assert result["stored_params"] == (result["Art_to_Clipart/stored_params"]
                                           + result["Clipart_to_Art/stored_params"])
        assert result["trial_started_at"] <= result["worker_started_at"] \
            <= result["train_started_at"]
        # A complete trial keeps its deltas and metrics, not the dense optimizer state.
        checkpoint = Path(result["checkpoint_path"])
        assert len(list(checkpoint.rglob("delta.safetensors"))) == 2
        assert (checkpoint / "metrics.json").is_file()
        assert not list(checkpoint.rglob("state.pt"))

    # MLflow, logged live into the run dir's store: one parent, a child per trial nested under
    # it, holding the values the study holds; the printed UI command opens that store.
    from mlflow import MlflowClient

    uri = f"sqlite:///{run_dir}/mlflow.db"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    parents = [r for r in runs if r.data.tags["vlpuda.kind"] == "search"]
    children = [r for r in runs if r.data.tags["vlpuda.kind"] == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    by_tune_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    for child in children:
        values = by_tune_id[child.data.tags["vlpuda.trial_id"]].values
        assert [child.data.metrics["target_acc"], child.data.metrics["stored_params"]] \
            == pytest.approx(values)
    assert f"open the UI with: mlflow ui --backend-store-uri {uri}" in out

    # Printed again later, from storage alone.
    assert main(["pareto", str(run_dir)]) == 0
    assert printed_front(capsys.readouterr().out) == front
