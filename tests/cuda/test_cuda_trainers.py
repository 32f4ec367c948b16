"""Several trainers on one GPU, and the real `vlpuda train` / `vlpuda evaluate` on the GPU."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_tiny_domains

from vlpuda.cli import main as vlpuda

pytestmark = pytest.mark.cuda

REPO = Path(__file__).resolve().parents[2]
TRAIN_ONE = Path(__file__).with_name("train_one.py")


def test_several_trainers_share_one_device(device, tmp_path):
    """Three trainer processes (a search's trials at gpus_per_trial 1/3) train at once on one
    device: each finishes, reports its peak memory on a GPU, and with the same seed all three
    end where a trainer alone ends, so they did not disturb one another."""
    data_dir = write_tiny_domains(tmp_path / "data", per_class=12)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(TRAIN_ONE), str(data_dir), device.type,
                                 str(tmp_path / name)], env=env, stdout=subprocess.PIPE,
                                text=True)

    def result(process: subprocess.Popen) -> dict:
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0, "a trainer failed: its error is in the captured stderr"
        return json.loads(out.strip().splitlines()[-1])

    alone = result(start("alone"))
    together = [result(p) for p in [start(f"shared{i}") for i in range(3)]]
    for metrics in [alone, *together]:
        assert math.isfinite(metrics["loss"]) and metrics["changed_params"] > 0
        if device.type == "cuda":
            assert 0 < metrics["peak_gpu_memory_gib"] < 4
    for metrics in together:
        # A GPU's convolution and reduction kernels may sum in another order from run to run.
        assert metrics["loss"] == pytest.approx(alone["loss"], rel=1e-3)
        assert metrics["weights_sum"] == pytest.approx(alone["weights_sum"], rel=1e-5)
        assert metrics["changed_params"] == pytest.approx(alone["changed_params"], rel=2e-2)


def test_vlpuda_train_on_the_demo_task(device, tmp_path, capsys):
    """A short `vlpuda train` of the demo preset (tiny CLIP teacher, digits) under bf16
    autocast; `vlpuda evaluate` of the delta it wrote scores the target as the run did."""
    out = tmp_path / "demo"
    code = vlpuda(["train", "--config", str(REPO / "configs" / "demo.yaml"), "--rst",
                   f"device={device.type}", "precision=amp_bf16", "epochs=1",
                   "iters_per_epoch=30", f"out_dir={out}"])
    assert code == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert metrics["epoch"] == 1 and metrics["iteration"] == 30
    assert metrics["target_acc_last"] > 20.0  # 10 digits: chance is 10 %
    assert 0 < metrics["changed_fraction"] < 0.9  # RST at the preset's tau 1e-5 keeps it sparse
    if device.type == "cuda":
        assert metrics["peak_gpu_memory_gib"] > 0
    capsys.readouterr()

    code = vlpuda(["evaluate", "--checkpoint", str(out / "best_delta.safetensors"),
                   f"--device={device.type}"])
    assert code == 0
    printed = capsys.readouterr().out
    accuracy = float(re.search(r"task head accuracy ([0-9.]+) %", printed).group(1))
    # The run scored a channels_last RN on the GPU and evaluate a contiguous one: TF32
    # convolutions may flip a prediction or two of the 2,000 targets.
    assert accuracy == pytest.approx(metrics["target_acc_last"], abs=0.5)


@pytest.fixture(scope="session")
def search_stack() -> None:
    """Skip (before Ray is started) where the search's own packages are missing."""
    for package in ("ray", "mlflow", "optuna"):
        pytest.importorskip(package, reason=f"{package} is not installed here (the bare GPU "
                            "machine has no Ray or MLflow; the Ray wheel alone is 79 MB)")


def test_search_shares_the_gpu_between_trials(search_stack, device, tmp_path, tiny_assets,
                                              ray_session):
    """A real search (Ray Tune + Train, Optuna, MLflow) whose two trials take half a GPU each:
    both finish on the GPU and report their peak GPU memory. Where Ray or MLflow is missing (the
    bare GPU machine: the Ray wheel alone is 79 MB) it skips; on a CPU the search path is
    tests/search/test_search_e2e.py."""
    if device.type != "cuda":
        pytest.skip("a CPU search is tests/search/test_search_e2e.py")
    sys.path.insert(0, str(REPO / "tests" / "search"))
    from search_helpers import tiny_preset, tune_trials, write_preset

    run_dir = tmp_path / "search"
    preset = tiny_preset(tiny_assets, run_dir, {"num_samples": 2, "max_concurrent_trials": 2,
                                                "gpus_per_trial": 0.5}, device="cuda")
    code = vlpuda(["search", "--config", str(write_preset(tmp_path / "p.yaml", preset))])
    assert code == 0
    trials = tune_trials(run_dir)
    assert len(trials) == 2
    for trial in trials.values():
        assert trial.status == "TERMINATED"
        assert trial.last_result["peak_gpu_memory_gib"] > 0
