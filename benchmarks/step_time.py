"""Trainer step time against a bare open_clip training step, measured in the same run.

    python benchmarks/step_time.py                       # CPU: both tiny test architectures
    python benchmarks/step_time.py --models RN50 ViT-B-16 --image-size 224 --device cuda
    python benchmarks/step_time.py ... --views 2 3         # also FixMatch's third (strong) view

For each model it times
  bare     open_clip image tower forward + backward + SGD step on the same 32 + 32 images
           (one batch of 64 through a linear classifier: the least work any trainer must do;
           96 with FixMatch's view, `--views 3`),
  trainer  vlpuda's CMKD + RST iteration (two forwards of 32 through the task and CLIP heads,
           the CMKD terms, SGD Nesterov, the RST reset, data sampling and augmentation; with
           `--views 3` also the strong view of the target images and the FixMatch terms),
  reset    the RST reset alone,
and prints bare/trainer (1.0 = no overhead) and the reset's share of a trainer step, one JSON
line per model (also appended to --jsonl). `trainer_images_per_s` counts the views the tower
encodes per second (64 per step at 32 + 32, 96 with FixMatch). Random-init
weights: speed does not depend on the weights. Images are synthetic uint8 arrays in memory.

Model FLOPs utilisation: the matmul and convolution FLOPs of one step, forward and backward, as
torch's FlopCounterMode counts them (elementwise work is not counted), per second, over the
device's dense peak for the precision: a built-in table for common GPUs, or `--peak-tflops`
(needed on a CPU; without it only the achieved TFLOP/s are printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from vlpuda.config import build_config  # noqa: E402
from vlpuda.trainables.assets import TaskAssets  # noqa: E402
from vlpuda.trainables.decoded import decoded_from_arrays  # noqa: E402
from vlpuda.trainables.loop import TaskRun  # noqa: E402

TINY_CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "model_configs"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_alternating(fns, repeats: int, device: torch.device) -> list[float]:
    """Median seconds per call of each function after one warm-up call each. The functions
    take turns, so a burst of load from other jobs hits all of them alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, samples in zip(fns, times):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


# Dense peak TFLOP/s from the vendors' data sheets (no structured sparsity), by a substring of
# torch.cuda.get_device_name() and vlpuda's precision. fp32 is the plain fp32 rate: PyTorch does
# not use TF32 for matmuls unless asked, and vlpuda does not ask.
PEAK_TFLOPS = {
    "H100 PCIe": {"amp_bf16": 756.0, "fp32": 51.0},
    "H100": {"amp_bf16": 989.4, "fp32": 66.9},  # SXM
    "H200": {"amp_bf16": 989.4, "fp32": 66.9},
    "A100": {"amp_bf16": 312.0, "fp32": 19.5},
}


def peak_tflops(device: torch.device, precision: str, given: float | None) -> float | None:
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():  # the first match: "H100 PCIe" before "H100"
        if key in name:
            return peaks[precision]
    return None


def step_flops(fn) -> int:
    """Matmul and convolution FLOPs of one call, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_memory(fn, device: torch.device) -> int:
    """Peak CUDA bytes allocated during one call (0 on a CPU)."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def synthetic_assets(num_classes: int, dim: int, size: int, n: int = 256) -> TaskAssets:
    rng = np.random.default_rng(0)
    classes = [f"class_{i}" for i in range(num_classes)]

    def domain(name: str):
        images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
        labels = rng.integers(0, num_classes, size=n).astype(np.int64)
        return decoded_from_arrays(name, classes, labels, images, images)

    prototypes = rng.standard_normal((num_classes, dim)).astype(np.float32)
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    return TaskAssets(classes, domain("source"), domain("target"), prototypes,
                      (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 100.0)


def synthetic_trainer(model_name: str, size: int, batch: int, iters: int, precision: str,
                      dim: int, device: torch.device, num_classes: int = 65,
                      fixmatch: bool = False) -> TaskRun:
    """vlpuda's trainer (CMKD + RST at tau 1e-6, batch `batch` + `batch`, + FixMatch's strong
    view if asked) on synthetic images, random-init weights; `train_epoch` runs `iters`
    iterations."""
    cfg, _ = build_config({
        "model": model_name, "pretrained": None, "train_resize": size, "image_size": size,
        "batch_size": batch, "target_batch_size": batch, "iters_per_epoch": iters, "epochs": 1,
        "rst": True, "rst_threshold": 1e-6, "precision": precision, "device": device.type,
        "fixmatch": fixmatch,
    })
    return TaskRun(cfg, synthetic_assets(num_classes, dim, size), device)


def bare_step_fn(model_name: str, size: int, images_per_step: int, num_classes: int, device,
                 precision: str = "fp32"):
    """The bare step, under the same autocast as the trainer's (fp32 weights either way)."""
    visual = open_clip.create_model(model_name).visual.to(device).train()
    images = torch.randn(images_per_step, 3, size, size, device=device)
    labels = torch.randint(0, num_classes, (images_per_step,), device=device)
    dim = visual(images[:2]).shape[-1]
    head = torch.nn.Linear(dim, num_classes).to(device)
    params = list(visual.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9, nesterov=True, weight_decay=5e-4)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=precision == "amp_bf16")

    def step():
        with autocast:
            logits = head(visual(images))
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, dim


def measure(model_name: str, size: int, batch: int, repeats: int, device, precision: str,
            peak: float | None, fixmatch: bool = False) -> dict:
    num_classes = 65
    views = 3 if fixmatch else 2  # source, target (and the target's strong view)
    torch.manual_seed(0)
    bare, dim = bare_step_fn(model_name, size, views * batch, num_classes, device, precision)
    bare_memory = peak_memory(bare, device)
    # The bare loop's model and optimiser stay allocated: not counted in the trainer's peak.
    resident = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    run = synthetic_trainer(model_name, size, batch, 1, precision, dim, device, num_classes,
                            fixmatch)
    bare_seconds, trainer_seconds, reset_seconds = timed_alternating(
        [bare, run.train_epoch, run.sparsity.reset_], repeats, device)
    trainer_memory = peak_memory(run.train_epoch, device) - resident
    bare_flops, trainer_flops = step_flops(bare), step_flops(run.train_epoch)
    run.close()
    bare_tflops = bare_flops / bare_seconds / 1e12
    trainer_tflops = trainer_flops / trainer_seconds / 1e12
    return {
        "model": model_name, "image_size": size, "precision": precision,
        "batch": f"{batch}+{batch}" + (f"+{batch} (FixMatch)" if fixmatch else ""),
        "bare_ms": 1000 * bare_seconds, "trainer_ms": 1000 * trainer_seconds,
        "bare_over_trainer": bare_seconds / trainer_seconds,
        "rst_reset_share": reset_seconds / trainer_seconds,
        "trainer_images_per_s": views * batch / trainer_seconds,
        "bare_peak_gib": bare_memory / 2**30, "trainer_peak_gib": trainer_memory / 2**30,
        "trainer_gflop_per_step": trainer_flops / 1e9,
        "bare_tflop_per_s": bare_tflops, "trainer_tflop_per_s": trainer_tflops,
        "bare_mfu": bare_tflops / peak if peak else None,
        "trainer_mfu": trainer_tflops / peak if peak else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny-vit-test", "tiny-rn-test"])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "amp_bf16"])
    parser.add_argument("--views", nargs="+", type=int, choices=[2, 3], default=[2],
                        help="views per step: 2 (source, target), 3 (+ FixMatch's strong view "
                        "of the target); several: one row each")
    parser.add_argument("--jsonl", type=Path, help="also append each row to this file")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's dense peak TFLOP/s at this precision, for MFU "
                        "(default: the table for known GPUs; none on a CPU)")
    args = parser.parse_args()
    for config in TINY_CONFIGS.glob("*.json"):
        open_clip.add_model_config(config)
    device = torch.device(args.device)
    machine = torch.cuda.get_device_name() if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    peak = peak_tflops(device, args.precision, args.peak_tflops)
    print(f"# {machine}; torch {torch.__version__}; precision {args.precision}; "
          f"peak {peak if peak else 'unknown'} TFLOP/s")
    for name, views in [(name, views) for name in args.models for views in args.views]:
        row = measure(name, args.image_size, args.batch, args.repeats, device, args.precision,
                      peak, fixmatch=views == 3)
        line = json.dumps({"machine": machine, "torch": torch.__version__,
                           **{k: round(v, 4) if isinstance(v, float) else v
                              for k, v in row.items()}})
        print(line, flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as handle:
                handle.write(line + "\n")


if __name__ == "__main__":
    main()
