"""Several trials on one device: throughput and memory at 1, 2 and 4 trials at once.

    .venv/bin/python benchmarks/trials_per_device.py                     # CPU, tiny towers
    .venv/bin/python benchmarks/trials_per_device.py --device cuda --models RN50 ViT-B-16 \
        --image-size 224 --precision amp_bf16

A search with `search.gpus_per_trial: 0.5` (or 0.25) runs 2 (or 4) trials on each GPU. This
measures what that buys without Ray in the way: N processes, each one vlpuda trainer
(`TaskRun`, CMKD + RST, batch 32 + 32, synthetic images), train on the same device at the same
time. Each process warms up, waits for the others at a barrier, then times its steps. Printed
per N: the images per second of all N together, that total over the 1-trial figure (the gain
from sharing the device), and each trial's peak memory (CUDA: reserved by the caching allocator,
which is what the other trials on the GPU cannot use; CPU: the process's peak RSS). Each
process gets cores / N torch threads, as Ray gives each trial its CPUs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))


def trial_process(model: str, size: int, batch: int, steps: int, device: str, precision: str,
                  threads: int, barrier, results) -> None:
    """One trial: build a trainer, warm up, wait for the others, time `steps` iterations."""
    import open_clip
    import torch

    from step_time import TINY_CONFIGS, synthetic_trainer

    torch.set_num_threads(threads)
    for config in TINY_CONFIGS.glob("*.json"):
        open_clip.add_model_config(config)
    dim = open_clip.get_model_config(model)["embed_dim"]  # without building a second model
    torch_device = torch.device(device)
    run = synthetic_trainer(model, size, batch, steps, precision, dim, torch_device)
    cfg = run.cfg
    run.cfg = cfg.model_copy(update={"iters_per_epoch": 3})
    run.train_epoch()  # warm-up: allocator, kernels, first-touch page faults
    run.cfg = cfg
    barrier.wait()
    if torch_device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run.train_epoch()
    if torch_device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if torch_device.type == "cuda":
        peak = torch.cuda.max_memory_reserved()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    results.put((2 * batch * steps / seconds, peak))
    run.close()


def measure(model: str, trials: int, args: argparse.Namespace) -> tuple[float, float]:
    """Images/s of `trials` concurrent trainers together, and their largest peak memory."""
    context = mp.get_context("spawn")  # CUDA cannot be forked
    barrier, results = context.Barrier(trials), context.Queue()
    # Each trial its share of the cores, as Ray gives each trial its CPUs (on a GPU they build
    # the model and gather batches).
    threads = max(1, (os.cpu_count() or 1) // trials)
    processes = [context.Process(target=trial_process, args=(
        model, args.image_size, args.batch, args.steps, args.device, args.precision, threads,
        barrier, results)) for _ in range(trials)]
    for process in processes:
        process.start()
    outcomes = []
    while len(outcomes) < trials:
        try:
            outcomes.append(results.get(timeout=5))
        except queue.Empty:
            # A trial that died (out of memory, a CUDA error) would leave the others waiting
            # at the barrier, and this loop waiting for ever.
            failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if failed:
                for process in processes:
                    process.kill()
                raise RuntimeError(f"{len(failed)} of {trials} trial processes failed "
                                   f"(exit codes {failed}); their error is printed above")
    for process in processes:
        process.join()
    return sum(rate for rate, _ in outcomes), max(peak for _, peak in outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny-vit-test", "tiny-rn-test"])
    parser.add_argument("--trials", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed iterations per trial")
    parser.add_argument("--rounds", type=int, default=3, help="repeats of every N, alternating")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "amp_bf16"])
    parser.add_argument("--jsonl", type=Path, help="also append each row to this file")
    args = parser.parse_args()

    if args.device == "cuda":
        import torch

        machine = torch.cuda.get_device_name()
    else:
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(f"# {machine}; {args.steps} iterations of {args.batch}+{args.batch} images per trial, "
          f"{args.image_size} px, {args.precision}, median of {args.rounds} rounds")
    for model in args.models:
        rates: dict[int, list[float]] = {n: [] for n in args.trials}
        peaks: dict[int, float] = {}
        for _ in range(args.rounds):  # N = 1, 2, 4 take turns, so load drift hits all alike
            for n in args.trials:
                rate, peaks[n] = measure(model, n, args)
                rates[n].append(rate)
        single = statistics.median(rates[args.trials[0]])
        for n in args.trials:
            total = statistics.median(rates[n])
            print(f"{model:>14}  {n} trial(s) per device: {total:8.1f} images/s together, "
                  f"{total / single:4.2f}x of {args.trials[0]}, peak memory per trial "
                  f"{peaks[n] / 2**30:.2f} GiB", flush=True)
            if args.jsonl:
                row = {"machine": machine, "model": model, "image_size": args.image_size,
                       "precision": args.precision, "batch": f"{args.batch}+{args.batch}",
                       "steps": args.steps, "rounds": args.rounds, "trials": n,
                       "images_per_s": round(total, 1), "over_first": round(total / single, 3),
                       "peak_gib_per_trial": round(peaks[n] / 2**30, 3)}
                with open(args.jsonl, "a") as handle:
                    handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
