"""Where a search's time goes: per-trial start-up overhead and the share of wall time that is
not training steps, for the demo search on this machine.

    .venv/bin/python benchmarks/search_overhead.py [--config configs/demo.yaml] [KEY=VALUE ...]

Runs the preset's search once (in a temporary run dir, so it never extends runs/<name>) and reads
the timestamps every trial reports:

    trial_started_at   the Tune trial function starts (before the TorchTrainer is built)
    worker_started_at  the Ray Train worker function starts (worker group up, DDP initialised)
    train_started_at   the training loop's first step (model loaded, assets fetched)

and each epoch's seconds_per_iteration x iters_per_epoch (time inside training steps). Figures are
printed as ratios measured in this one run, so they compare across machines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def trial_rows(manifest: dict) -> list[list[dict]]:
    """Every trial's per-epoch results, from the Tune experiment."""
    import ray.tune

    experiment = Path(manifest["ray_storage"]) / manifest["experiment"]
    analysis = ray.tune.ExperimentAnalysis(str(experiment))
    frames = analysis.trial_dataframes
    return [frames[t.trial_id].to_dict("records") for t in analysis.trials
            if t.trial_id in frames]


def summarise(rows_by_trial: list[list[dict]], iters_per_epoch: int, wall: float,
              concurrency: int) -> list[str]:
    """The figures, as ratios. Trial-slot time is wall x concurrency: what the search could have
    spent training if every slot trained all the time."""
    startup, worker_up, setup, durations, steps = [], [], [], [], []
    for rows in rows_by_trial:
        first, last = rows[0], rows[-1]
        startup.append(first["train_started_at"] - first["trial_started_at"])
        worker_up.append(first["worker_started_at"] - first["trial_started_at"])
        setup.append(first["train_started_at"] - first["worker_started_at"])
        durations.append(last["timestamp"] - first["trial_started_at"])
        steps.append(sum(r["seconds_per_iteration"] * iters_per_epoch for r in rows))
    slot = wall * concurrency
    within = sum(durations) - sum(startup) - sum(steps)  # evaluation, checkpoints, reports
    mean = statistics.mean
    return [
        f"trials: {len(rows_by_trial)}, {concurrency} at a time; search wall {wall:.0f} s "
        f"(Ray start, Tuner and front included)",
        f"per trial: trial start -> first training step {mean(startup):.1f} s "
        f"({min(startup):.1f}-{max(startup):.1f}): worker group start {mean(worker_up):.1f} s "
        f"+ model and data set-up in the worker {mean(setup):.1f} s; "
        f"= {mean(startup) / mean(durations):.2f} of a trial (trial start -> last report)",
        f"share of trial-slot time ({concurrency} x wall): training steps "
        f"{sum(steps) / slot:.2f}, trial start-up {sum(startup) / slot:.2f}, evaluation + "
        f"checkpoints + reports {within / slot:.2f}, outside trials (Ray and Tune start, "
        f"trial actors, idle slots) {1 - sum(durations) / slot:.2f}",
        f"outside training steps: {1 - sum(steps) / slot:.2f} of trial-slot time",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    from vlpuda.config import parse_overrides, read_yaml
    from vlpuda.layout import read_manifest
    from vlpuda.search.cluster import derive_concurrency, local_cluster_cpus
    from vlpuda.search.driver import run_search
    from vlpuda.search.plan import build_plan, split_overrides

    train, search = split_overrides(parse_overrides(args.overrides))
    scratch = tempfile.mkdtemp(prefix="vlpuda-bench-")
    search.update(run_dir=scratch, name=f"bench-{time.strftime('%Y%m%d-%H%M%S')}")
    plan = build_plan(read_yaml(args.config), train, search, args.config)
    # The demo's one-off teacher pre-training would count as search time: do it first.
    from vlpuda.trainables.assets import resolve_demo

    for task in plan.tasks:
        resolve_demo(task)
    started = time.monotonic()
    run_search(plan, log=lambda line: None)
    wall = time.monotonic() - started
    rows = trial_rows(read_manifest(plan.run_dir))
    cores = os.cpu_count() or 1
    concurrency = derive_concurrency(plan.settings, {"CPU": local_cluster_cpus(
        plan.settings, cores, 0)})
    print(f"search overhead: {args.config} on {cores} CPU cores, "
          f"{plan.tasks[0].epochs} epochs x {plan.tasks[0].iters_per_epoch} iterations per trial")
    for line in summarise(rows, plan.tasks[0].iters_per_epoch, wall, concurrency):
        print("  " + line)
    shutil.rmtree(scratch)  # kept when something above failed, for a look
    return 0


if __name__ == "__main__":
    sys.exit(main())
