"""`vlpuda train` / `evaluate` given bad input: one message naming the file and what to do,
exit 2, no traceback, and nothing an earlier run wrote is lost or overwritten."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch

from helpers import tiny_train_overrides, write_local_dir_model, write_tiny_domains
from vlpuda.cli import main
from vlpuda.layout import BEST_DELTA_FILE
from vlpuda.trainables.prune import STATE_FILE


def train_argv(overrides: dict, *extra: str) -> list[str]:
    return ["train", *extra, *(f"{k}={v}" for k, v in overrides.items() if v is not None),
            "pretrained=null"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch run (its own model folder, so a test may replace its weights)."""
    root = tmp_path_factory.mktemp("finished")
    data = write_tiny_domains(root / "data")
    model = write_local_dir_model(root / "model", "tiny-rn-test")
    overrides = {**tiny_train_overrides(data, model, root / "run"), "epochs": 1}
    assert main(train_argv(overrides)) == 0
    return root, overrides


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_clean(err: str, *names: str) -> None:
    assert "Traceback" not in err and "weights_only=False" not in err
    for name in names:
        assert name in err, (name, err)


@pytest.mark.parametrize("where", ["proc", "under_file"])
def test_unwritable_out_dir_fails_before_loading(finished, tmp_path, capsys, where):
    root, overrides = finished
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = "/proc/vlpuda-run" if where == "proc" else str(blocker / "run")
    cache = tmp_path / "image-cache"  # decoding would create it: it must stay absent
    argv = train_argv({**overrides, "out_dir": out, "image_cache_dir": str(cache)})
    assert main(argv) == 2
    assert_clean(capsys.readouterr().err, out, "--out-dir")
    assert not cache.exists()
    assert blocker.read_text() == "not a folder"


def test_second_run_into_a_finished_run_is_refused(finished, capsys):
    root, overrides = finished
    before = snapshot(root / "run")
    assert main(train_argv(overrides)) == 2
    assert_clean(capsys.readouterr().err, str(root / "run"), "--resume", "--out-dir",
                 "--overwrite")
    assert snapshot(root / "run") == before


def test_overwrite_replaces_the_run_and_metrics_hold_one_run(finished, tmp_path, capsys):
    root, overrides = finished
    out = tmp_path / "copy"
    shutil.copytree(root / "run", out)
    assert main(train_argv({**overrides, "out_dir": str(out), "epochs": 2}, "--overwrite")) == 0
    epochs = [line for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [int(__import__("json").loads(x)["epoch"]) for x in epochs] == [1, 2]
    assert (out / BEST_DELTA_FILE).is_file()


@pytest.mark.parametrize("content", ["random", "malicious", "foreign_dict"])
def test_resume_from_a_bad_state_file_is_refused(finished, tmp_path, capsys, content):
    root, overrides = finished
    out = tmp_path / "run"
    shutil.copytree(root / "run", out)
    state = out / "checkpoint" / STATE_FILE
    if content == "random":
        state.write_bytes(os.urandom(2048))
    elif content == "malicious":
        # Unpickling this would run print(); weights_only loading must refuse it.
        state.write_bytes(pickle.dumps(type("Evil", (), {"__reduce__": lambda self: (
            print, ("pwned",))})()))
    else:
        torch.save({"epoch": 1}, state)  # tensors-only, but not a training state
    before = snapshot(out)
    assert main(train_argv({**overrides, "out_dir": str(out), "epochs": 2}, "--resume")) == 2
    captured = capsys.readouterr()
    assert "pwned" not in captured.out
    assert_clean(captured.err, str(state), "--overwrite")
    if content == "random":
        assert "not a PyTorch checkpoint" in captured.err
    assert snapshot(out) == before


def test_delta_on_other_base_weights_is_refused(finished, tmp_path, capsys):
    root, overrides = finished
    delta = root / "run" / BEST_DELTA_FILE
    assert main(["evaluate", "--checkpoint", str(delta)]) == 0
    right = capsys.readouterr().out
    # The same architecture with other weights, where the delta's model folder points.
    weights = root / "model" / "open_clip_model.safetensors"
    kept = weights.read_bytes()
    write_local_dir_model(tmp_path / "other", "tiny-rn-test", seed=1)
    shutil.copy(tmp_path / "other" / "open_clip_model.safetensors", weights)
    try:
        assert main(["evaluate", "--checkpoint", str(delta)]) == 2
        assert_clean(capsys.readouterr().err, str(delta), "other base weights",
                     "--allow-base-mismatch")
        assert main(["evaluate", "--checkpoint", str(delta), "--allow-base-mismatch"]) == 0
        assert capsys.readouterr().out != right
    finally:
        weights.write_bytes(kept)


@pytest.mark.parametrize("kind", ["other_architecture", "random_bytes"])
def test_unloadable_pretrained_weights(finished, tmp_path, capsys, kind):
    import open_clip

    root, overrides = finished
    weights = tmp_path / "weights.bin"
    if kind == "random_bytes":
        weights.write_bytes(os.urandom(4096))
    else:  # a text tower of another width: open_clip asserts while resizing its embedding
        state = open_clip.create_model("tiny-rn-test").state_dict()
        state["positional_embedding"] = torch.zeros(16, 32)
        torch.save(state, weights)
    argv = train_argv({**overrides, "out_dir": str(tmp_path / "run"), "model": "tiny-rn-test"})
    argv[-1] = f"pretrained={weights}"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert_clean(err, str(weights))
    assert ("not a PyTorch checkpoint" if kind == "random_bytes" else "--model") in err
