"""MOASHA against no early stopping in real searches on the offline demo task (CPU).

    .venv/bin/python benchmarks/demo_early_stopping.py --out runs/bench-demo-es   # ~25 min, 2 cores
    .venv/bin/python benchmarks/demo_early_stopping.py --out runs/bench-demo-es --analyse-only

Runs `vlpuda search --config configs/demo.yaml` twice with the same seed and trial count, once with
`search.early_stopping.method=none` and once with `moasha` (grace period: the preset's default),
each in its own run directory, then reads both studies and prints, against no early stopping:
  hv        hypervolume of the final front (trials and sparsity-ladder points, as the search
            reports it) under one reference shared by both searches (pareto.default_reference
            of every point of both), on (target_acc, log10 stored_params) and on the raw axes,
  compute   epochs trained by all trials, pruned ones included (each trial's last epoch),
  sparse hv the hypervolume of the points storing less than the median of no-stopping's front.
The searches run for real (Ray Tune, Optuna, MLflow off): the figures include the sampler's luck
on 16 trials, which the surrogate benchmark (early_stopping.py) averages over seeds instead.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("none", "moasha")


def run_search(out: Path, method: str, trials: int, seed: int) -> None:
    command = [sys.executable, "-m", "vlpuda.cli", "search", "--config",
               str(ROOT / "configs" / "demo.yaml"), "--no-tracking",
               f"search.num_samples={trials}", f"search.seed={seed}",
               f"search.early_stopping.method={method}", f"search.name=demo-es-{method}",
               f"search.run_dir={out / method}"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def front_points(run_dir: Path) -> tuple[np.ndarray, int, dict[str, int]]:
    """The front's (target_acc, stored_params) points, epochs trained, and trial states."""
    from vlpuda.front.trials import front_of
    from vlpuda.layout import read_manifest
    from vlpuda.search.study import load_study

    study = load_study(read_manifest(run_dir))
    trials = study.get_trials(deepcopy=False)
    front = front_of(trials)
    points = [t.values for t in front.trials]
    points += [[p[m] for m in front.metrics] for _, p in front.derived]
    epochs = sum(int(t.user_attrs.get("epoch", 0)) for t in trials)
    return np.array(points, dtype=float).reshape(-1, 2), epochs, dict(front.states)


def hypervolumes(points: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    from vlpuda.front.pareto import default_reference, hypervolume_2d, pareto_front_mask
    from vlpuda.objectives import MODES

    logged = {m: np.column_stack([p[:, 0], np.log10(p[:, 1])]) for m, p in points.items()}
    out: dict[str, dict[str, float]] = {m: {} for m in points}
    for axes, data in (("log", logged), ("raw", points)):
        reference = default_reference(np.vstack(list(data.values())), MODES)
        for method, values in data.items():
            out[method][axes] = hypervolume_2d(values, MODES, reference)
    # The sparse end: points below the median stored parameters of no-stopping's front.
    median = float(np.median(points["none"][:, 1]))
    sparse = {m: logged[m][points[m][:, 1] < median] for m in points}
    every = np.vstack([v for v in sparse.values() if len(v)] or [logged["none"]])
    reference = default_reference(every, MODES)
    reference = (reference[0], math.log10(median))
    for method, values in sparse.items():
        kept = values[pareto_front_mask(values, MODES)] if len(values) else values
        out[method]["sparse"] = hypervolume_2d(kept, MODES, reference) if len(kept) else 0.0
    return out


def analyse(out: Path) -> None:
    points, epochs, states = {}, {}, {}
    for method in METHODS:
        points[method], epochs[method], states[method] = front_points(out / method)
    hv = hypervolumes(points)
    print(f"{'method':8} {'trials':28} {'front':>5} {'epochs':>6} {'compute':>7} "
          f"{'hv log':>7} {'hv raw':>7} {'sparse hv':>9}")
    for method in METHODS:
        ratio = {k: hv[method][k] / hv["none"][k] if hv["none"][k] else float("nan")
                 for k in ("log", "raw", "sparse")}
        print(f"{method:8} {str(states[method]):28} {len(points[method]):5d} "
              f"{epochs[method]:6d} {epochs[method] / epochs['none']:7.3f} "
              f"{ratio['log']:7.3f} {ratio['raw']:7.3f} {ratio['sparse']:9.3f}")
    for method in METHODS:
        front = ", ".join(f"{a:.1f} % @ {s:,.0f}" for a, s in points[method])
        print(f"{method} front: {front}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-demo-es")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--analyse-only", action="store_true")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if not args.analyse_only:
        for method in METHODS:
            run_search(out, method, args.trials, args.seed)
    analyse(out)


if __name__ == "__main__":
    main()
