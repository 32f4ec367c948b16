"""The training loop on a tiny real task: resume reproduces the uninterrupted run; the CLI trains,
and `vlpuda evaluate` reproduces the run's accuracy from the delta alone."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from helpers import tiny_train_overrides, write_local_dir_model, write_tiny_domains
from vlpuda.cli import main
from vlpuda.config import build_config
from vlpuda.layout import BEST_DELTA_FILE, DELTA_FILE
from vlpuda.trainables.loop import TaskRun, train
from vlpuda.trainables.reporting import LocalReporter, aggregate
from vlpuda.trainables.rst import load_delta


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data = write_tiny_domains(root / "data")
    model = write_local_dir_model(root / "model", "tiny-rn-test")
    return root, data, model


class Crash(Exception):
    pass


def crash_after_first_epoch(reporter: LocalReporter):
    def report(metrics, checkpoint_dir):
        reporter(metrics, checkpoint_dir)
        if metrics["epoch"] == 1:
            raise Crash
    return report


@pytest.mark.parametrize("extra", [
    {"rst": True, "rst_threshold": 1e-4},
    {"rst": True, "rst_mode": "ratio", "rst_ratio": 0.05, "fixmatch": True,
     "fixmatch_threshold": 0.3},
    # partial-set: the resumed run must rebuild the label set the interrupted one would use
    {"pda": True, "pda_min_predictions": 3, "fixmatch": True, "fixmatch_threshold": 0.3},
])
def test_resume_reproduces_uninterrupted_run(tiny_task, tmp_path, extra):
    _, data, model = tiny_task
    # out_dir is recorded in the delta's metadata: equal-length names keep the byte counts equal
    whole_cfg, _ = build_config({**tiny_train_overrides(data, model, tmp_path / "run_a"), **extra})
    whole = train(whole_cfg, reporter=LocalReporter(whole_cfg.out_dir, log=lambda _: None))

    cut_cfg, _ = build_config({**tiny_train_overrides(data, model, tmp_path / "run_b"), **extra})
    reporter = LocalReporter(cut_cfg.out_dir, log=lambda _: None)
    with pytest.raises(Crash):
        train(cut_cfg, reporter=crash_after_first_epoch(reporter))
    assert json.loads((tmp_path / "run_b/metrics.jsonl").read_text())["epoch"] == 1
    resumed = train(cut_cfg, reporter=reporter, resume_from=reporter.checkpoint_dir)

    assert resumed["iteration"] == whole["iteration"] == 8
    for key in ("target_acc_last", "target_acc", "loss", "stored_params", "delta_bytes",
                "proxy_im", "target_acc_clip"):
        assert resumed[key] == whole[key], key
    whole_delta = load_delta(tmp_path / "run_a/checkpoint" / DELTA_FILE)
    cut_delta = load_delta(tmp_path / "run_b/checkpoint" / DELTA_FILE)
    assert whole_delta.visual.keys() == cut_delta.visual.keys()
    for name, (index, values) in whole_delta.visual.items():
        assert torch.equal(values, cut_delta.visual[name][1]), name
    for name, value in whole_delta.head_state.items():
        assert torch.equal(value, cut_delta.head_state[name]), name


def test_cli_train_then_evaluate_reproduces_accuracy(tiny_task, tmp_path, capsys):
    _, data, model = tiny_task
    overrides = tiny_train_overrides(data, model, tmp_path / "run")
    argv = ["train", "--rst", "--rst-threshold", "1e-4"]
    argv += [f"{k}={v}" for k, v in overrides.items() if v is not None] + ["pretrained=null"]
    assert main(argv) == 0
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    best = max(lines, key=lambda m: m["target_acc_last"])
    assert (tmp_path / "run" / BEST_DELTA_FILE).exists()
    capsys.readouterr()

    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / BEST_DELTA_FILE)]) == 0
    out = capsys.readouterr().out
    assert f"task head accuracy {best['target_acc_last']:.2f} %" in out
    assert f"stored parameters {best['stored_params']:,}" in out
    last = lines[-1]
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run/checkpoint" / DELTA_FILE)]) == 0
    assert f"task head accuracy {last['target_acc_last']:.2f} %" in capsys.readouterr().out


def test_multi_task_run_reports_mean_and_sum(tiny_task, tmp_path):
    _, data, model = tiny_task
    base = tiny_train_overrides(data, model, tmp_path / "multi")
    base["epochs"] = 1
    forward, _ = build_config({**base, "rst": True, "rst_threshold": 1e-4})
    backward = forward.model_copy(update={"src": "Clipart", "tgt": "Art"})
    seen = []
    metrics = train([forward, backward], reporter=lambda m, d: seen.append((m, d)))
    a, b = metrics["Art_to_Clipart/target_acc_last"], metrics["Clipart_to_Art/target_acc_last"]
    assert metrics["target_acc_last"] == pytest.approx((a + b) / 2)
    assert metrics["stored_params"] == (metrics["Art_to_Clipart/stored_params"]
                                        + metrics["Clipart_to_Art/stored_params"])
    assert len(seen) == 1


def test_aggregate_means_accuracy_sums_storage_and_keeps_the_peak_memory():
    per_task = {"A_to_B": {"epoch": 2, "target_acc": 80.0, "stored_params": 100,
                           "delta_bytes": 800, "best_epoch": 1, "peak_gpu_memory_gib": 3.0},
                "B_to_A": {"epoch": 2, "target_acc": 70.0, "stored_params": 50,
                           "delta_bytes": 400, "best_epoch": 2, "peak_gpu_memory_gib": 3.5}}
    combined = aggregate(per_task)
    assert {k: v for k, v in combined.items() if "/" not in k} == {
        "epoch": 2, "target_acc": 75.0, "stored_params": 150, "delta_bytes": 1200,
        "peak_gpu_memory_gib": 3.5}  # no best_epoch: each task has its own
    assert combined["B_to_A/best_epoch"] == 2 and combined["A_to_B/target_acc"] == 80.0
    assert aggregate({"A_to_B": per_task["A_to_B"]}) == per_task["A_to_B"]


def test_validate_lists_every_problem(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("lr: -1\nlamda1: 0.2\nrst_ratio: 2\nprompt_template: 'no slot'\n"
                      f"data_dir: {tmp_path / 'missing'}\nsrc: Art\ntgt: Art\n")
    assert main(["validate", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    for expected in ("lr:", "lamda1: unknown key (did you mean 'lambda1'?)", "rst_ratio:",
                     "prompt_template:", "tgt: equals src"):
        assert expected in err, expected
    assert str(config) in err


def test_train_rejects_missing_data_dir_before_loading_anything(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path / "nowhere"), "--src", "Art",
                 "--tgt", "Clipart"]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_resume_state_is_loaded_without_pickle(tiny_task, tmp_path):
    """The state file loads with weights_only=True: nothing in it needs code to unpickle."""
    _, data, model = tiny_task
    cfg, _ = build_config({**tiny_train_overrides(data, model, tmp_path / "r"), "epochs": 1})
    train(cfg, reporter=LocalReporter(cfg.out_dir, log=lambda _: None))
    state = torch.load(tmp_path / "r/checkpoint/state.pt", weights_only=True)
    assert state["iteration"] == 4 and state["epoch"] == 1


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_step_matches_eager(tiny_task, tmp_path):
    """`compile: true` runs the same model. What torch.compile promises is the same forward
    output and gradients up to float reordering, for one step; it does not promise identical
    runs over many steps (RST's threshold turns reordering differences into different kept
    entries, which differ between CPUs), so one step on one batch is compared."""
    _, data, model = tiny_task
    cfg, _ = build_config({**tiny_train_overrides(data, model, tmp_path / "c"),
                           "rst": True, "rst_threshold": 1e-4, "compile": True})
    run = TaskRun(cfg, None, torch.device("cpu"))
    assert run.model is not run.student  # the compiled wrapper around the same parameters
    run.iteration = 4  # mid-ramp, so every CMKD term carries weight
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, 32, 32, generator=generator) for _ in range(2)]
    labels = torch.randint(0, 4, (8,), generator=generator)

    def one_step(module):
        run.student.zero_grad(set_to_none=True)
        loss = run._loss(module(*batches), labels)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in run.student.named_parameters()
                 if p.grad is not None}
        return loss.detach(), grads

    run.model.train()
    eager_loss, eager_grads = one_step(run.student)
    compiled_loss, compiled_grads = one_step(run.model)
    run.close()
    assert compiled_loss.item() == pytest.approx(eager_loss.item(), rel=1e-4)
    assert compiled_grads.keys() == eager_grads.keys() and eager_grads
    for name, grad in eager_grads.items():
        # normwise: fp32 reordering moves a gradient by ~1e-6 of its norm on any CPU
        error = (compiled_grads[name] - grad).norm()
        assert error <= 1e-3 * grad.norm() + 1e-8, name
