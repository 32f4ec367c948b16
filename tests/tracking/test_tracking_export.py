"""`vlpuda export` round trip: a real training run's best delta, logged on a child run the way
the search logs trials, fetched back by run id, reproduces the accuracy the run reported."""

from __future__ import annotations

import json
import shutil

import yaml

from helpers import tiny_train_overrides
from vlpuda.cli import main
from vlpuda.tracking.content import SearchInfo
from vlpuda.tracking.where import resolve_destination


def test_exported_delta_reproduces_the_reported_accuracy(tmp_path, tiny_files, empty_mlflow_db,
                                                         capsys):
    from mlflow import MlflowClient

    from vlpuda.tracking.runs import Recorder

    # A real (tiny) training run: one epoch, its delta and metrics on disk.
    data, model = tiny_files
    out = tmp_path / "train"
    config = tiny_train_overrides(data, model, out)
    config.update(epochs=1, iters_per_epoch=2, rst=True, rst_threshold=1e-4)
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(preset)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows[-1]["checkpoint_path"] = str(out / "checkpoint")

    # Logged as a trial's child run, by the code the Tune callback uses.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(empty_mlflow_db, run_dir / "mlflow.db")
    dest = resolve_destination(None, run_dir)
    info = SearchInfo("tiny/tune-1", "tiny", "tiny", "tiny", str(run_dir), ("Art_to_Clipart",),
                      (("Art", "Clipart"),), 1, None, "tiny", model)
    recorder = Recorder(MlflowClient(dest.uri), info, dest)
    recorder.open_parent()
    child = recorder.child("0000abcd", {"lr": config["lr"]}, 1)
    recorder.log_results(child, rows)
    assert recorder.end_child(child, rows, error=False)
    capsys.readouterr()

    exported = tmp_path / "exported"
    assert main(["export", "--run", child.info.run_id, "--out", str(exported),
                 "--tracking-uri", str(run_dir)]) == 0  # a run dir finds its own store
    said = capsys.readouterr().out
    delta = exported / "best_delta.safetensors"
    assert delta.read_bytes() == (out / "best_delta.safetensors").read_bytes()
    assert f"target_acc {rows[-1]['target_acc']:.2f}" in said

    assert main(["evaluate", "--checkpoint", str(delta)]) == 0
    evaluated = capsys.readouterr().out
    # The same accuracy, as evaluate prints it (two decimals).
    assert f"task head accuracy {rows[-1]['target_acc']:.2f} %" in evaluated
    assert f"stored parameters {rows[-1]['stored_params']:,}" in evaluated


def test_export_errors_say_what_to_do(tmp_path, empty_mlflow_db, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(empty_mlflow_db, run_dir / "mlflow.db")
    assert main(["export", "--run", "0" * 32, "--out", str(tmp_path / "x"),
                 "--tracking-uri", str(run_dir)]) == 2
    assert "no run" in capsys.readouterr().err
