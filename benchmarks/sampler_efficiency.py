"""How fast each Optuna sampler grows the accuracy-vs-stored-parameters front, on a surrogate.

    .venv/bin/python benchmarks/sampler_efficiency.py            # ~100 s on 2 idle cores
    .venv/bin/python benchmarks/sampler_efficiency.py --spaces cmkd_rst --first-seed 10
    .venv/bin/python benchmarks/sampler_efficiency.py --concurrency 4 --only tpe
    .venv/bin/python benchmarks/sampler_efficiency.py --gp --only gp  # GPSampler: 20 trials, slow

The real search machinery runs unchanged; only the training is replaced:
  space     vlpuda.spaces.build_space("cmkd_rst" / "cmkd_rst_ratio"), define-by-run,
  searcher  ray.tune.search.optuna.OptunaSearch(metric=[target_acc, stored_params],
            mode=[max, min]), driven in-process with suggest() / on_trial_complete() (no ray.init),
            with the Office-Home paper defaults as its first point, as vlpuda's driver does,
  samplers  vlpuda.search.study.make_sampler for the named ones (tpe, nsga2, random, gp); the
            variants it cannot build (multivariate TPE, other NSGA-II populations) are constructed
            directly with the same seed,
  maths     vlpuda.front.pareto.hypervolume_history under one fixed reference point.
The trainer is replaced by `surrogate`, a cheap deterministic model of ViT-B/16 on Office-Home
built from the paper's figures (docs/method.md#the-papers-reported-results). It is not a
prediction of real accuracies: it only has the shape the search has to find (an lr plateau with a
collapse above it, a head-lr optimum coupled to lr x multiplier, mild loss-weight optima, and the
RST threshold trading stored parameters for accuracy).

Two hypervolumes are printed, both with the reference (zero-shot accuracy 82.4, 1.1 x a dense
model's stored parameters):
  hv_log     stored parameters on a log10 axis: rewards covering the whole front, from a few
             kB of head to a dense delta (what a user choosing a storage budget sees),
  hv_linear  stored parameters as counted (what `vlpuda pareto` and MLflow report); it is
             dominated by the best accuracy among the sparse trials.
For each sampler: mean +- std over seeds at several trial counts, and the trials its mean curve
needs to reach random search's final mean hypervolume. Nothing is asserted: the figures go into
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import yaml  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from vlpuda.front.pareto import hypervolume_history  # noqa: E402
from vlpuda.search.study import make_sampler  # noqa: E402
from vlpuda.spaces import SearchSpace, build_space  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METRICS = ["target_acc", "stored_params"]
MODES = ["max", "min"]

# ---- The surrogate: ViT-B/16, Office-Home averages (docs/method.md#the-papers-reported-results)

N_VISUAL = 86_192_640  # CLIP ViT-B/16 visual parameters
HEAD = 35_328  # Office-Home head: 4d + d*C with d = 512, C = 65
ZERO_SHOT_ACC = 82.4  # Table I: a task model below this is worth nothing
LINEAR_PROBE_ACC = 86.5  # Table VII: the backbone unchanged
FULL_FT_ACC = 88.4  # Table I: CMKD, dense
BACKBONE_GAIN = FULL_FT_ACC - LINEAR_PROBE_ACC
# The paper's encoder lrs for ViT and ResNet on Office-Home: the plateau of the lr response.
LR_PLATEAU = (math.log10(3e-7), math.log10(3e-6))
# Config 1 (lr 3e-4) collapses; put the cliff a little above the plateau so the searched range
# (up to 1e-5) holds collapsed trials, as a real search finds them.
LR_COLLAPSE = math.log10(8e-6)
HEAD_LR_BEST = math.log10(3e-3)  # both backbones' defaults give a head lr of 3e-3
# log10(tau / lr) -> fraction of visual weights left changed (Fig. 4 sweep,
# docs/method.md#the-papers-reported-results: 0.033 -> ~20 %, 0.33 -> ~0.1 %, 3.3 -> ~0.05 %,
# 33 -> about a linear probe), log-interpolated.
THRESHOLD_T = (-2.0, -1.5, -0.48, 0.52, 1.52, 2.0)
CHANGED_LOG10 = tuple(math.log10(f) for f in (0.5, 0.2, 1e-3, 5e-4, 1e-5, 2e-6))
# Share of the backbone's accuracy gain kept, at the same sweep points (ViT: 88.4, 87.7, 86.8,
# 86.5 against full fine-tuning 88.4 and a linear probe 86.5).
RETENTION_T = (-1.5, -0.48, 0.52, 1.52)
RETENTION = (1.0, 0.63, 0.16, 0.0)
ACC_NOISE = 0.15  # points: the spread of a rerun with another seed
PARAMS_NOISE = 0.05  # relative


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def lr_accuracy(log_lr: float) -> tuple[float, float]:
    """(share of the backbone gain reachable, points lost) at this encoder lr."""
    low, high = LR_PLATEAU
    # Below the plateau the backbone barely moves: the gain fades (log-quadratic), toward a
    # linear probe. Above it, a log-quadratic penalty and then a collapse.
    gain = math.exp(-0.5 * (max(0.0, low - log_lr) / 0.8) ** 2)
    penalty = 2.0 * max(0.0, log_lr - high) ** 2 + 25.0 * _sigmoid((log_lr - LR_COLLAPSE) / 0.06)
    return gain, penalty


def loss_weight_penalty(config: dict[str, Any]) -> float:
    """Points lost to the loss weights and label smoothing (table VI and IX shapes)."""
    penalty = 1.2 * math.log10(config["lambda1"] / 0.25) ** 2  # best near 0.25
    penalty += 1.5 * max(0.0, config["lambda2"] - 0.1)  # slightly worse when large
    penalty += 10.0 * max(0.0, config["lambda3"] - 0.025)
    penalty += 8.0 * (config["label_smoothing"] - 0.1) ** 2
    return penalty


def changed_fraction_and_retention(config: dict[str, Any]) -> tuple[float, float]:
    """(fraction of visual weights stored, share of the backbone gain kept) for either RST mode."""
    if "rst_ratio" in config:
        fraction = float(config["rst_ratio"])
        # Ratio mode keeps exactly that fraction; its accuracy follows the threshold sweep read by
        # the fraction each threshold left changed.
        t = float(np.interp(math.log10(fraction), CHANGED_LOG10[::-1], THRESHOLD_T[::-1]))
    else:
        t = math.log10(config["rst_threshold_over_lr"])
        fraction = 10 ** float(np.interp(t, THRESHOLD_T, CHANGED_LOG10))
    return fraction, float(np.interp(t, RETENTION_T, RETENTION))


def _noise_rng(config: dict[str, Any], seed: int) -> np.random.Generator:
    # Keyed on the configuration: the same point gets the same noise whichever sampler asks.
    searched = {k: round(float(v), 12) for k, v in sorted(config.items())
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
    digest = hashlib.blake2b(json.dumps(searched).encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def surrogate(config: dict[str, Any], seed: int) -> tuple[float, float]:
    """(target_acc in %, stored_params) for one trial configuration."""
    log_lr = math.log10(config["lr"])
    gain, lr_penalty = lr_accuracy(log_lr)
    head_lr = log_lr + math.log10(config["lr_multiplier"])
    head_penalty = min(8.0, 0.6 * (head_lr - HEAD_LR_BEST) ** 2)
    fraction, retention = changed_fraction_and_retention(config)
    rng = _noise_rng(config, seed)
    acc = (LINEAR_PROBE_ACC + BACKBONE_GAIN * gain * retention - lr_penalty - head_penalty
           - loss_weight_penalty(config) + rng.normal(0.0, ACC_NOISE))
    stored = HEAD + N_VISUAL * fraction * math.exp(rng.normal(0.0, PARAMS_NOISE))
    return float(acc), float(min(stored, HEAD + N_VISUAL))


# ---- Samplers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerSpec:
    """A sampler to compare: its label, how it is built, and the trials it runs (None = all)."""

    label: str
    build: Callable[[int, int], optuna.samplers.BaseSampler]  # (seed, num_samples)
    via: str  # "make_sampler" or "direct"
    max_trials: int | None = None


def _tpe(**kwargs: Any) -> Callable[[int, int], optuna.samplers.BaseSampler]:
    return lambda seed, _n: optuna.samplers.TPESampler(seed=seed, **kwargs)


def sampler_specs(gp_trials: int | None) -> list[SamplerSpec]:
    """The samplers compared; make_sampler builds the named ones as a search would."""
    specs = [
        SamplerSpec("random", lambda s, n: make_sampler("random", s, n), "make_sampler"),
        SamplerSpec("tpe", lambda s, n: make_sampler("tpe", s, n), "make_sampler"),
        SamplerSpec("tpe(multivariate)", _tpe(multivariate=True), "direct"),
        SamplerSpec("tpe(multivariate, startup=5)",
                    _tpe(multivariate=True, n_startup_trials=5), "direct"),
        SamplerSpec("tpe(multivariate, startup=20)",
                    _tpe(multivariate=True, n_startup_trials=20), "direct"),
        SamplerSpec("tpe(startup=10)", _tpe(n_startup_trials=10), "direct"),  # Optuna's own
        SamplerSpec("nsga2 (pop=N/4)", lambda s, n: make_sampler("nsga2", s, n), "make_sampler"),
        SamplerSpec("nsga2(pop=10)",
                    lambda s, _n: optuna.samplers.NSGAIISampler(seed=s, population_size=10),
                    "direct"),
    ]
    if gp_trials:
        specs.append(SamplerSpec("gp", lambda s, n: make_sampler("gp", s, n), "make_sampler",
                                 gp_trials))
    return specs


# ---- One search ----------------------------------------------------------------------------


def paper_defaults(space: SearchSpace) -> dict[str, Any]:
    """The first point vlpuda's driver evaluates: the Office-Home preset's values."""
    preset = yaml.safe_load((REPO / "configs" / "office_home.yaml").read_text())
    return space.defaults_point(preset)


def run_search(space: SearchSpace, sampler: optuna.samplers.BaseSampler, n_trials: int,
               seed: int, concurrency: int, defaults: dict[str, Any]) -> np.ndarray:
    """(n_trials, 2) [target_acc, stored_params] in the order the trials were told."""
    searcher = OptunaSearch(space, metric=METRICS, mode=MODES, sampler=sampler,
                            points_to_evaluate=[defaults] if defaults else None)
    values: list[tuple[float, float]] = []
    asked = 0
    while asked < n_trials:
        # A batch asked before any of it is told: what `concurrency` parallel trials look like
        # to the sampler (TPE's constant liar sees the running ones).
        batch = []
        for _ in range(min(concurrency, n_trials - asked)):
            trial_id = f"t{asked:04d}"
            batch.append((trial_id, searcher.suggest(trial_id)))
            asked += 1
        for trial_id, config in batch:
            acc, stored = surrogate(config, seed)
            searcher.on_trial_complete(trial_id, {"target_acc": acc, "stored_params": stored})
            values.append((acc, stored))
    return np.array(values)


def reference_point(log_params: bool) -> tuple[float, float]:
    # Fixed for every sampler and seed: a trial below zero-shot accuracy, or storing more than a
    # dense model, adds nothing.
    dense = 1.1 * (N_VISUAL + HEAD)
    return ZERO_SHOT_ACC, math.log10(dense) if log_params else dense


def hv_curve(values: np.ndarray, log_params: bool) -> np.ndarray:
    """Hypervolume after each trial, under the fixed reference."""
    points = values.copy()
    if log_params:
        points[:, 1] = np.log10(points[:, 1])
    return hypervolume_history(points, MODES, reference_point(log_params))


# ---- Reporting -----------------------------------------------------------------------------


@dataclass
class SamplerResult:
    spec: SamplerSpec
    curves: dict[str, np.ndarray]  # measure -> (seeds, trials)
    seconds: float


def trials_to_reach(mean_curve: np.ndarray, target: float) -> int | None:
    """First trial count whose mean hypervolume reaches `target`, None if never."""
    hits = np.flatnonzero(mean_curve >= target - 1e-12)
    return int(hits[0]) + 1 if hits.size else None


def checkpoints(n_trials: int) -> list[int]:
    return [n for n in (10, 20, 40, 80, 160) if n < n_trials] + [n_trials]


def print_table(results: list[SamplerResult], measure: str, n_trials: int) -> dict[str, Any]:
    """One table per measure; returns {label: trials to reach random's final mean hv}."""
    random_final = results[0].curves[measure].mean(axis=0)[-1]
    points = checkpoints(n_trials)
    scale = 1e6 if measure == "hv_linear" else 1.0
    unit = " (x1e6)" if scale != 1.0 else ""
    print(f"\n  {measure}{unit}: mean +- std over seeds after N trials; 'reach' = trials the "
          f"mean curve needs to reach random's N={n_trials} mean ({random_final / scale:.4g})")
    header = "".join(f"{'N=' + str(n):>16}" for n in points)
    print(f"  {'sampler':<31}{header}{'reach':>8}{'seeds<=N/2':>12}{'s/run':>7}")
    reached: dict[str, Any] = {}
    for result in results:
        curves = result.curves[measure]
        cells = ""
        for n in points:
            if n <= curves.shape[1]:
                column = curves[:, n - 1] / scale
                cells += f"{column.mean():>9.3f} +-{column.std():>5.3f}"
            else:
                cells += f"{'-':>16}"
        reach = trials_to_reach(curves.mean(axis=0), random_final)
        half = min(curves.shape[1], n_trials // 2)
        seeds_half = int((curves[:, half - 1] >= random_final).sum())
        reached[result.spec.label] = reach
        reach_text = str(reach) if reach else f">{curves.shape[1]}"
        print(f"  {result.spec.label:<31}{cells}{reach_text:>8}"
              f"{f'{seeds_half}/{curves.shape[0]}':>12}{result.seconds / curves.shape[0]:>7.2f}")
    return reached


def recommend(reached: dict[str, dict[str, Any]], n_trials: int) -> str:
    """The sampler reaching random's final hypervolume within N/2 trials on every table, fastest.

    Args:
        reached: per table ("space hv_measure"), {sampler label: trials to reach or None}.
        n_trials: the N random search ran.
    """
    tables = list(reached)
    ok = []
    for label in reached[tables[0]]:
        counts = [reached[t].get(label) for t in tables]
        if label != "random" and all(c is not None and c <= n_trials // 2 for c in counts):
            ok.append((max(counts), sum(counts), label))
    if not ok:
        return (f"none reaches random's N={n_trials} mean hypervolume within {n_trials // 2} "
                f"trials on all {len(tables)} tables")
    worst, _total, label = min(ok)
    return (f"{label}: reaches random's N={n_trials} mean hypervolume within {worst} trials "
            f"on all {len(tables)} tables")


# ---- Main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spaces", nargs="+", default=["cmkd_rst", "cmkd_rst_ratio"])
    parser.add_argument("--trials", type=int, default=80)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds run from here: a second set checks a choice made on the first")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="trials asked before the first of them is told")
    parser.add_argument("--no-defaults", action="store_true",
                        help="do not evaluate the paper defaults first")
    parser.add_argument("--gp", action="store_true", help="add GPSampler, on --gp-trials only")
    parser.add_argument("--gp-trials", type=int, default=20)
    parser.add_argument("--only", nargs="+", help="sampler labels to run (random always runs)")
    return parser.parse_args(argv)


def quiet() -> None:
    # Experimental-feature and independent-sampling notices would bury the tables.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("ray").setLevel(logging.ERROR)


def run_space(space_name: str, specs: list[SamplerSpec], args: argparse.Namespace
              ) -> list[SamplerResult]:
    space = build_space(space_name)
    defaults = {} if args.no_defaults else paper_defaults(space)
    results = []
    for spec in specs:
        n = spec.max_trials or args.trials
        curves: dict[str, list[np.ndarray]] = {"hv_log": [], "hv_linear": []}
        start = time.perf_counter()
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            values = run_search(space, spec.build(seed, n), n, seed, args.concurrency, defaults)
            curves["hv_log"].append(hv_curve(values, log_params=True))
            curves["hv_linear"].append(hv_curve(values, log_params=False))
        seconds = time.perf_counter() - start
        results.append(SamplerResult(spec, {k: np.stack(v) for k, v in curves.items()}, seconds))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet()
    specs = sampler_specs(args.gp_trials if args.gp else None)
    if args.only:
        specs = [s for s in specs if s.label == "random" or s.label in args.only]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, optuna {optuna.__version__}")
    print(f"trials {args.trials}, seeds {args.first_seed}..{args.first_seed + args.seeds - 1}, "
          f"concurrency {args.concurrency}, "
          f"paper defaults first: {not args.no_defaults}")
    for spec in specs:
        print(f"  {spec.label:<31} built by {spec.via}")
    total = time.perf_counter()
    reached: dict[str, dict[str, Any]] = {}
    for space_name in args.spaces:
        print(f"\n== space {space_name} ==")
        results = run_space(space_name, specs, args)
        for measure in ("hv_log", "hv_linear"):
            reached[f"{space_name} {measure}"] = print_table(results, measure, args.trials)
    print(f"\nrecommendation: {recommend(reached, args.trials)}")
    print(f"total {time.perf_counter() - total:.0f} s")


if __name__ == "__main__":
    main()
