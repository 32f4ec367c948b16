"""A search on an unlabeled target, end to end (real Ray, Optuna, MLflow): ranked and kept by a
label-free validator, with no label-dependent metric anywhere; and the oracle refused up front."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from optuna.trial import TrialState

from search_helpers import dominates, run_study, tiny_preset, tune_trials, write_preset
from vlpuda.cli import main
from vlpuda.objectives import LABEL_METRICS


def unlabeled_preset(assets, run_dir: Path, **search):
    return tiny_preset(assets, run_dir, {"num_samples": 2, **search}, tgt="ClipartFlat",
                       unlabeled_target=True, epochs=2)


def label_keys(keys) -> set[str]:
    return {k for k in keys if k.rsplit("/", 1)[-1] in LABEL_METRICS}


def test_target_acc_objective_on_unlabeled_target_fails_before_ray(tiny_unlabeled_assets,
                                                                   tmp_path, capsys):
    preset = unlabeled_preset(tiny_unlabeled_assets, tmp_path / "run", objective="target_acc")
    config = write_preset(tmp_path / "oracle.yaml", preset)
    assert main(["search", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "search.objective: target_acc needs target labels" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


@pytest.mark.slow
def test_search_by_snd_on_unlabeled_target(ray_session, tiny_unlabeled_assets, tmp_path,
                                           capsys):
    run_dir = tmp_path / "run"
    config = write_preset(tmp_path / "snd.yaml",
                          unlabeled_preset(tiny_unlabeled_assets, run_dir, objective="proxy_snd"))
    assert main(["search", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "target_acc" not in out  # not as a value, not as a column, not as 0

    study = run_study(run_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert study.metric_names == ["proxy_snd_best", "stored_params"]  # as Optuna shows them
    values = {t.number: t.values for t in study.trials}
    front = [t.number for t in study.best_trials]
    for a, b in itertools.permutations(front, 2):
        assert not dominates(values[a], values[b])
    rows = json.loads((run_dir / "front.json").read_text())
    assert rows["objectives"] == ["proxy_snd_best", "stored_params"]
    # the trials' rows (sparsity-ladder points follow them, with trial None and a parent_trial)
    trial_rows = [r for r in rows["trials"] if r["trial"] is not None]
    assert sorted(r["trial"] for r in trial_rows) == sorted(front)
    assert all(r["parent_trial"] in front for r in rows["trials"] if r["trial"] is None)
    assert "selection_gap" not in rows
    for trial in study.trials:
        assert not label_keys(trial.user_attrs), trial.user_attrs

    # Tune: every epoch's result is label-free; each trial's objective is the kept epoch's SND.
    picked = {}
    for trial in tune_trials(run_dir).values():
        results = [json.loads(line) for line in
                   (Path(trial.path) / "result.json").read_text().splitlines()]
        assert [r["epoch"] for r in results] == [1, 2]
        for result in results:
            assert not label_keys(result), sorted(label_keys(result))
        snd = [r["proxy_snd"] for r in results]
        assert results[-1]["proxy_snd_best"] == max(snd)
        picked[trial.trial_id] = int(np.argmax(snd)) + 1
        assert results[-1]["best_epoch"] == picked[trial.trial_id]
    by_tune_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    for tune_id, trial in by_tune_id.items():
        assert trial.values[0] == pytest.approx(
            max(json.loads(line)["proxy_snd"] for line in
                (Path(tune_trials(run_dir)[tune_id].path) / "result.json").read_text()
                .splitlines()))

    # MLflow: no label metric on any run; the kept delta is the epoch SND picked.
    from mlflow import MlflowClient

    from vlpuda.tracking.backfill import export_delta
    from vlpuda.trainables.rst import load_delta

    uri = f"sqlite:///{run_dir}/mlflow.db"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("snd").experiment_id])
    children = [r for r in runs if r.data.tags["vlpuda.kind"] == "trial"]
    assert len(children) == 2
    for run in runs:
        assert not label_keys(run.data.metrics), sorted(label_keys(run.data.metrics))
    for child in children:
        tune_id = child.data.tags["vlpuda.trial_id"]
        export_delta(child.info.run_id, tmp_path / tune_id, uri)
        kept = load_delta(next((tmp_path / tune_id).rglob("best_delta.safetensors")))
        assert kept.metadata["epoch"] == str(picked[tune_id])
