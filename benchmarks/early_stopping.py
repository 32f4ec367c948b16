"""Front per epoch trained: no early stopping, accuracy-only ASHA and MOASHA, with and without the
sparsity ladder, on a multi-fidelity surrogate.

    .venv/bin/python benchmarks/early_stopping.py                  # ~2-4 min on 2 cores
    .venv/bin/python benchmarks/early_stopping.py --seeds 3 --trials 48 --eta 4

The real search machinery runs; only training is replaced:
  space      vlpuda.spaces.build_space("cmkd_rst" / "cmkd_rst_ratio"),
  searcher   vlpuda.search.searcher.ParetoOptunaSearch (in-memory study; stopped trials are
             told PRUNED, complete ones COMPLETE with their ladder points, as in a search),
  scheduler  vlpuda.search.stopping.make_scheduler's classes: FIFOScheduler, LoggedASHA (Ray's
             ASHAScheduler on target_acc, time_attr epoch) and MOASHAScheduler, called through
             their Tune hooks (on_trial_add / on_trial_result / on_trial_complete) with a stub
             trial. Tune itself does not run: an event-driven simulator of W workers delivers one
             result per trial-epoch in simulated time order (running Tune for 6 x 5 x 64 trials
             would take hours here and add nothing to the decisions).
The surrogate extends benchmarks/sampler_efficiency.py's (final values unchanged) with learning
curves (docs/search.md#evaluating-early-stopping): accuracy rises to its final value along a
config-dependent curve, sparse configs later (kappa); stored parameters grow with the epochs in
threshold mode and are fixed in ratio mode; noise per epoch. The ladder's cut to a fraction f of a
delta's changed weights is modelled as the surrogate's accuracy for that many changed weights (the
paper's RST sweep) less CUT_PENALTY points per halving, since a cut is not retrained (an
assumption, stated in benchmarks/README.md); each cut costs LADDER_EVAL_EPOCHS of compute.

Measured per method, against no early stopping without the ladder (same seeds, same trial count):
  hv         hypervolume (target_acc, log10 stored_params; reference zero-shot 82.4, 1.1 x dense)
             of the final front of complete trials (and ladder points),
  compute    epochs trained by all trials (stopped ones included) + ladder evaluations,
  C95, C99   compute at which the front first reaches 95 % (99 %) of no-stopping's final
             hypervolume, as a share of no-stopping's total compute,
  sparse hv  hypervolume of the front's points below the median stored parameters of
             no-stopping's final front (reference: 82.4, that median).
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampler_efficiency import (  # noqa: E402
    BACKBONE_GAIN,
    HEAD,
    N_VISUAL,
    ZERO_SHOT_ACC,
    _noise_rng,
    changed_fraction_and_retention,
    paper_defaults,
    quiet,
    surrogate,
)

from vlpuda.search.moasha import LoggedASHA, MOASHAScheduler  # noqa: E402
from vlpuda.front.pareto import hypervolume_2d, pareto_front_mask  # noqa: E402
from vlpuda.search.searcher import ParetoOptunaSearch  # noqa: E402
from vlpuda.objectives import METRICS, MODES  # noqa: E402
from vlpuda.search.study import make_sampler  # noqa: E402
from vlpuda.spaces import build_space  # noqa: E402
from vlpuda.trainables.ladder import ladder_metrics  # noqa: E402

# Defaults of the learning curves (docs/search.md#evaluating-early-stopping).
GAMMA, K0, KS0, KAPPA_S, SIGMA = 6.0, 8.0, 6.0, 1.0, 0.15
CUT_PENALTY = 0.2  # points a cut loses per halving for not being retrained (an assumption)
LADDER_EVAL_EPOCHS = 0.1  # one evaluation of the target, in epochs of training
REFERENCE = (ZERO_SHOT_ACC, math.log10(1.1 * (N_VISUAL + HEAD)))


def _h(u: float, k: float) -> float:
    return (1 - math.exp(-k * u)) / (1 - math.exp(-k))


def curves(config: dict, seed: int, epochs: int, kappa: float) -> list[tuple[float, float]]:
    """(target_acc, stored_params) after each epoch 1..E; the last is surrogate(config, seed)."""
    acc_e, stored_e = surrogate(config, seed)
    rng = _noise_rng(config, seed + 7919)
    fraction = max((stored_e - HEAD) / N_VISUAL, 1e-9)
    z = min(max((math.log10(0.5) - math.log10(fraction)) / (math.log10(0.5) - math.log10(2e-6)),
                0.0), 1.0)
    k_acc = K0 * math.exp(-kappa * z) * math.exp(0.2 * rng.normal())
    k_stored = KS0 * math.exp(-KAPPA_S * z)
    best, out = -math.inf, []
    for e in range(1, epochs + 1):
        u = e / epochs
        noise = SIGMA * rng.normal() if e < epochs else 0.0
        best = max(best, acc_e - GAMMA * (1 - _h(u, k_acc)) + noise)
        stored = stored_e if "rst_ratio" in config else HEAD + (stored_e - HEAD) * _h(u, k_stored)
        out.append((best, stored))
    return out


def retention(fraction: float) -> float:
    """Share of the backbone's gain the surrogate gives a trial leaving `fraction` changed."""
    return changed_fraction_and_retention({"rst_ratio": min(max(fraction, 1e-9), 1.0)})[1]


def ladder(acc: float, stored: float, steps: int) -> list[dict]:
    """Cuts to 1/2 .. 1/2^steps of the changed weights: the accuracy the surrogate gives that
    many changed weights, less CUT_PENALTY points per halving (the cut is not retrained)."""
    fraction = (stored - HEAD) / N_VISUAL
    return [{"fraction": 2.0 ** -i,
             "target_acc": acc - BACKBONE_GAIN * max(0.0, retention(fraction)
                                                     - retention(fraction * 2.0 ** -i))
             - CUT_PENALTY * i,
             "stored_params": HEAD + (stored - HEAD) * 2.0 ** -i}
            for i in range(1, steps + 1)]


def make(method: str, epochs: int, grace: int, eta: float):
    from ray.tune.schedulers import FIFOScheduler

    rungs = {"max_t": epochs, "grace_period": grace, "reduction_factor": eta}
    if method == "moasha":
        return MOASHAScheduler(METRICS, MODES, **rungs)
    if method == "asha":
        return LoggedASHA(METRICS[0], MODES[0], **rungs)
    return FIFOScheduler()


def simulate(space, method: str, args, seed: int, steps: int) -> dict:
    """One search: returns the points on hand after each trial end, with the compute so far."""
    np.random.seed(seed)  # Ray's ASHA draws brackets from the global generator
    scheduler = make(method, args.epochs, args.grace, args.eta)
    searcher = ParetoOptunaSearch(space, full_epochs=args.epochs, experiment="bench",
                                  sampler=make_sampler(args.sampler, seed, args.trials),
                                  points_to_evaluate=None if args.no_defaults
                                  else [paper_defaults(space)])
    clock: list[tuple[float, int, str]] = []  # (time, worker, trial id)
    running: dict[str, dict] = {}
    asked, compute, points, history = 0, 0.0, [], []

    def start(worker: int, now: float) -> None:
        nonlocal asked
        if asked >= args.trials:
            return
        trial_id = f"t{asked:04d}"
        asked += 1
        config = searcher.suggest(trial_id)
        stub = SimpleNamespace(trial_id=trial_id)
        scheduler.on_trial_add(None, stub)
        speed = math.exp(0.1 * _noise_rng(config, seed + 31).normal())
        running[trial_id] = {"config": config, "stub": stub, "epoch": 0, "speed": speed,
                             "curve": curves(config, seed, args.epochs, args.kappa)}
        heapq.heappush(clock, (now + speed, worker, trial_id))

    for worker in range(args.workers):
        start(worker, 0.0)
    while clock:
        now, worker, trial_id = heapq.heappop(clock)
        trial = running[trial_id]
        trial["epoch"] += 1
        compute += 1
        acc, stored = trial["curve"][trial["epoch"] - 1]
        result = {"epoch": trial["epoch"], "training_iteration": trial["epoch"],
                  "target_acc": acc, "stored_params": stored}
        done = trial["epoch"] >= args.epochs
        if done and steps:
            result.update(ladder_metrics(ladder(acc, stored, steps)))
            compute += LADDER_EVAL_EPOCHS * steps
        decision = scheduler.on_trial_result(None, trial["stub"], result)
        if done or decision == "STOP":
            scheduler.on_trial_complete(None, trial["stub"], result)
            searcher.on_trial_complete(trial_id, result)
            if done:
                points.append((acc, stored))
                points += [(p["target_acc"], p["stored_params"])
                           for p in ladder(acc, stored, steps)]
            history.append((compute, list(points)))
            del running[trial_id]
            start(worker, now)
        else:
            heapq.heappush(clock, (now + trial["speed"], worker, trial_id))
    states = [t.state.name for t in searcher.study.trials]
    return {"history": history, "compute": compute, "points": points,
            "pruned": states.count("PRUNED"), "complete": states.count("COMPLETE")}


def hv(points: list[tuple[float, float]], bound: float | None = None) -> float:
    """Log-axis hypervolume; with `bound`, of the points storing at most `bound` only."""
    pts = np.array([(a, math.log10(s)) for a, s in points
                    if bound is None or s <= bound], dtype=float).reshape(-1, 2)
    ref = REFERENCE if bound is None else (ZERO_SHOT_ACC, math.log10(bound))
    if len(pts) == 0:
        return 0.0
    return hypervolume_2d(pts[pareto_front_mask(pts, MODES)], MODES, ref)


def front_median(points: list[tuple[float, float]]) -> float:
    pts = np.array(points, dtype=float)
    return float(np.median(pts[pareto_front_mask(pts, MODES)][:, 1]))


def measure(run: dict, base: dict, bound: float) -> dict:
    def reach(share: float) -> float | None:
        target = share * hv(base["points"])
        hit = next((c for c, pts in run["history"] if hv(pts) >= target), None)
        return None if hit is None else hit / base["compute"]

    return {"hv": hv(run["points"]) / hv(base["points"]),
            "compute": run["compute"] / base["compute"],
            "c95": reach(0.95), "c99": reach(0.99),
            "sparse": hv(run["points"], bound) / max(hv(base["points"], bound), 1e-12),
            "pruned": run["pruned"] / args_trials(run)}


def args_trials(run: dict) -> int:
    return run["pruned"] + run["complete"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spaces", nargs="+", default=["cmkd_rst", "cmkd_rst_ratio"])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--grace", type=int, default=5)
    parser.add_argument("--eta", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--kappa", type=float, default=1.5)
    parser.add_argument("--ladder", type=int, default=3)
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--no-defaults", action="store_true",
                        help="do not evaluate the paper defaults first (the driver does)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}")
    print(f"trials {args.trials}, seeds 0..{args.seeds - 1}, epochs {args.epochs}, grace "
          f"{args.grace}, eta {args.eta:g}, workers {args.workers}, kappa {args.kappa:g}, "
          f"sampler {args.sampler}, ladder {args.ladder}, paper defaults first "
          f"{not args.no_defaults}")
    started = time.perf_counter()
    methods = [(m, steps) for steps in (0, args.ladder) for m in ("none", "asha", "moasha")]
    for space_name in args.spaces:
        space = build_space(space_name)
        rows: dict[tuple[str, int], list[dict]] = {key: [] for key in methods}
        for seed in range(args.seeds):
            runs = {key: simulate(space, key[0], args, seed, key[1]) for key in methods}
            base = runs[("none", 0)]
            bound = front_median(base["points"])
            for key, run in runs.items():
                rows[key].append(measure(run, base, bound))
        print(f"\n== space {space_name}: median [min, max] over seeds, relative to no early "
              "stopping without the ladder ==")
        print(f"  {'method':<18}{'hv':>22}{'compute':>22}{'C95':>22}{'C99':>22}{'sparse hv':>22}"
              f"{'pruned':>8}")
        for (method, steps), values in rows.items():
            label = method + (f" + ladder {steps}" if steps else "")
            cells = ""
            for name in ("hv", "compute", "c95", "c99", "sparse"):
                # Never reaching the level counts as infinite compute (a censored value).
                column = [math.inf if v[name] is None else v[name] for v in values]
                median = float(np.median(column))
                text = "never" if math.isinf(median) else f"{median:.3f}"
                cells += f"{text:>8} [{min(column):.2f}, {max(column):.2f}]"
            pruned = np.median([v["pruned"] for v in values])
            print(f"  {label:<18}{cells}{pruned:>8.2f}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
