"""How well each label-free validator selects checkpoints, measured with the labels it never sees.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python benchmarks/validators.py run --out runs/bench-validators
    PYTHONPATH=. python benchmarks/validators.py analyse --out runs/bench-validators

`run` trains, per offline task (MNIST -> Printed, MNIST -> MNIST-M, MNIST -> SKDigits: sklearn's
bundled 8x8 UCI handwritten digits, upsampled), a random search of TRIALS trials x 3 epochs over
the cmkd_rst space with wide bounds (learning rates up to 30x the demo's, so some trials collapse
or turn over-confident) plus two deliberately bad points. It runs the trials in-process with the
same training loop a search's Ray workers run (vlpuda.trainables.loop.train), and appends every
epoch's metrics (all validators and the true target accuracy, on the same target images) to
records-<task>.jsonl, once. `analyse` computes every statistic from those records only:

* Spearman and Kendall (tau-b) of each validator vs true target accuracy over all checkpoints;
* selection gap: best true accuracy of any checkpoint minus that of the validator's single pick
  (ties: the lowest trial's earliest epoch; docs/validators.md#8-measuring-a-label-free-choice);
* front ratio: each trial keeps the epoch the validator scores best (as `selection:` does); the
  label-free front is non-dominated in (validator, stored_params); its true-accuracy hypervolume
  over that of the oracle front (each trial's best-accuracy epoch, non-dominated in (accuracy,
  stored_params)), one reference point: accuracy 0, 1.1 x the largest stored count;
* cost: seconds per checkpoint on a target-sized logit matrix (MixVal: its measured share of an
  evaluation pass, recorded by the loop).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

TASKS = (("MNIST", "Printed"), ("MNIST", "MNIST-M"), ("MNIST", "SKDigits"))
TRIALS = 12
VALIDATORS = ("proxy_entropy", "proxy_im", "proxy_bnm", "proxy_snd", "proxy_mixval",
              "proxy_mixval_intra", "proxy_mixval_inter", "proxy_zs_agreement",
              "proxy_source_acc", "proxy_clip_agreement")
# Wide bounds around the demo's own settings: the top of the lr range makes training collapse.
SPACE_OVERRIDES = {"lr": {"low": 1e-4, "high": 3e-2}, "lr_multiplier": {"low": 1, "high": 100},
                   "rst_threshold_over_lr": {"low": 1e-3, "high": 1e-1}}
BAD_POINTS = ({"lr": 3e-2, "lr_multiplier": 100.0, "lambda1": 0.5, "lambda2": 0.0,
               "lambda3": 0.05, "label_smoothing": 0.0, "rst_threshold_over_lr": 1e-3},
              {"lr": 1e-4, "lr_multiplier": 1.0, "lambda1": 0.02, "lambda2": 0.3,
               "lambda3": 0.0, "label_smoothing": 0.2, "rst_threshold_over_lr": 1e-1})


def sk_digits(out: Path) -> None:
    """sklearn's 1,797 UCI digits (8x8, 17 grey levels) as 32 px white-on-black RGB PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        grey = Image.fromarray((image * (255 / 16)).astype(np.uint8)).resize(
            (22, 22), Image.Resampling.BILINEAR)
        canvas = Image.new("L", (32, 32), 0)
        canvas.paste(grey, (5, 5))  # MNIST-like margin around the digit
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        canvas.convert("RGB").save(folder / f"{i:05d}.png")


def data_root(out: Path, teacher_steps: int) -> Path:
    """The demo's domains (linked) plus SKDigits, under out/data; the teacher with them."""
    from vlpuda.trainables.demo import prepare_demo

    demo = prepare_demo(teacher_steps=teacher_steps)
    root = out / "data"
    root.mkdir(parents=True, exist_ok=True)
    for name in ("MNIST", "MNIST-M", "Printed"):
        try:  # several benchmark processes may get here at once
            os.symlink(demo.data_dir / name, root / name)
        except FileExistsError:
            pass
    if not (root / "SKDigits").exists():
        staging = root / f"SKDigits.tmp-{os.getpid()}"
        sk_digits(staging)
        try:
            staging.rename(root / "SKDigits")
        except OSError:
            shutil.rmtree(staging)  # another process finished first; same images
    return root


def trial_points(n: int, seed: int) -> list[dict]:
    """The demo defaults, the bad points, then random draws from the widened space."""
    import optuna

    from vlpuda.config import load_config
    from vlpuda.spaces import build_space

    space = build_space("cmkd_rst", SPACE_OVERRIDES)
    cfg, _ = load_config("configs/demo.yaml")
    points = [space.defaults_point(cfg.model_dump())] if n else []
    points += [dict(p) for p in BAD_POINTS]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    while len(points) < n:
        trial = study.ask()
        space(trial)
        points.append(dict(trial.params))
        study.tell(trial, 0.0)
    return [space(optuna.trial.FixedTrial(p)) for p in points[:n]]


def run(out: Path, trials: int, iters: int, tasks: list[int], teacher_steps: int) -> None:
    from vlpuda.config import load_config
    from vlpuda.trainables.assets import build_task_assets, resolve_demo
    from vlpuda.trainables.demo import DEFAULT_TEACHER_STEPS, prepare_demo
    from vlpuda.trainables.loop import train
    from vlpuda.trainables.params import apply_params

    root = data_root(out, teacher_steps)
    import torch

    torch.set_num_threads(1)
    for index in tasks:
        src, tgt = TASKS[index]
        # One records file per task: parallel processes (one per task) never share a file.
        records = out / f"records-{index}.jsonl"
        done = set()
        if records.exists():
            done = {r["trial"] for r in map(json.loads, records.read_text().splitlines())}
        # The demo's recipe; a shorter epoch keeps the ramp over the whole run.
        base, _ = load_config("configs/demo.yaml", {
            "src": src, "tgt": tgt, "data_dir": str(root), "domains": [], "source_holdout": 0.1,
            "iters_per_epoch": iters, "ramp_horizon": 3 * iters})
        if teacher_steps != DEFAULT_TEACHER_STEPS:  # a cheaper teacher than the demo's
            teacher = prepare_demo(teacher_steps=teacher_steps).teacher_dir
            base = base.model_copy(update={"model": f"local-dir:{teacher}", "pretrained": None})
        base = resolve_demo(base)
        assets = build_task_assets(base)
        for number, params in enumerate(trial_points(trials, seed=TASKS.index((src, tgt)))):
            task = f"{src}->{tgt}"
            if number in done:
                continue
            cfg = apply_params(base, params).model_copy(update={"out_dir": str(out / "scratch")})
            started = time.perf_counter()
            epochs = []

            def record(metrics, checkpoint_dir, epochs=epochs):
                epochs.append(metrics)

            train(cfg, assets, reporter=record)
            with open(records, "a") as handle:
                for m in epochs:
                    handle.write(json.dumps({"task": task, "trial": number, "params": params,
                                             "n_target": len(assets.target), **m}) + "\n")
            print(f"{task} trial {number}: {time.perf_counter() - started:.0f} s, acc "
                  f"{[round(m['target_acc_last'], 1) for m in epochs]}", flush=True)


# ---- analysis: statistics from the records alone --------------------------------------------


def selection_gap(acc: np.ndarray, score: np.ndarray) -> float:
    """Best accuracy minus that of the top-scored checkpoint (records are in (trial, epoch)
    order, so argmax's first maximum is the earliest epoch of the lowest trial)."""
    score = np.where(np.isfinite(score), score, np.nanmin(score[np.isfinite(score)]))
    return float(acc.max() - acc[int(np.argmax(score))])


def front_hv(points: np.ndarray) -> float:
    """Hypervolume of (accuracy max, stored min) points against the module's reference."""
    from vlpuda.front.pareto import hypervolume_2d, pareto_front_mask

    mask = pareto_front_mask(points, ("max", "min"))
    return hypervolume_2d(points[mask], ("max", "min"), REFERENCE)


REFERENCE: tuple[float, float] = (0.0, 1.0)


def front_ratio(rows: list[dict], name: str) -> float:
    """True-accuracy hypervolume of the validator's front over the oracle front's."""
    from vlpuda.front.pareto import pareto_front_mask

    global REFERENCE
    by_trial: dict[int, list[dict]] = {}
    for r in rows:
        by_trial.setdefault(r["trial"], []).append(r)
    REFERENCE = (0.0, 1.1 * max(r["stored_params"] for r in rows))

    def kept(epochs, key):
        values = [e[key] if np.isfinite(e.get(key, np.nan)) else -np.inf for e in epochs]
        return epochs[int(np.argmax(values))]

    picks = [kept(e, name) for e in by_trial.values()]
    scored = np.array([[p[name], p["stored_params"]] for p in picks], dtype=float)
    scored[~np.isfinite(scored[:, 0]), 0] = -1e9
    on_front = pareto_front_mask(scored, ("max", "min"))
    label_free = np.array([[p["target_acc_last"], p["stored_params"]]
                           for p, keep in zip(picks, on_front) if keep])
    oracle = np.array([[kept(e, "target_acc_last")["target_acc_last"],
                        kept(e, "target_acc_last")["stored_params"]] for e in by_trial.values()])
    return front_hv(label_free) / front_hv(oracle)


def validator_costs(n: int, classes: int = 10) -> dict[str, float]:
    """Seconds per checkpoint of each logit-based validator on an n x classes matrix."""
    import torch

    from vlpuda.trainables import validators as v

    logits = torch.randn(n, classes) * 3
    pred = logits.argmax(1)
    calls = {"proxy_entropy": lambda: v.neg_entropy(logits),
             "proxy_im": lambda: v.information_maximization(logits),
             "proxy_bnm": lambda: v.batch_nuclear_norm(logits),
             "proxy_snd": lambda: v.soft_neighborhood_density(logits),
             "proxy_zs_agreement": lambda: v.agreement(pred, pred),
             "proxy_clip_agreement": lambda: v.agreement(pred, pred)}
    costs = {}
    for name, call in calls.items():
        started = time.perf_counter()
        call()
        costs[name] = time.perf_counter() - started
    return costs


def analyse(out: Path) -> None:
    from scipy.stats import kendalltau, spearmanr

    rows = [json.loads(line) for path in sorted(out.glob("records-*.jsonl"))
            for line in path.read_text().splitlines()]
    tasks = sorted({r["task"] for r in rows}, key=[f"{s}->{t}" for s, t in TASKS].index)
    table: dict[str, dict[str, list[float]]] = {}
    for task in tasks:
        mine = sorted((r for r in rows if r["task"] == task), key=lambda r: (r["trial"], r["epoch"]))
        acc = np.array([r["target_acc_last"] for r in mine])
        eval_s = float(np.median([r["eval_seconds"] for r in mine]))
        n_target = int(mine[0]["n_target"])
        costs = validator_costs(n_target)
        print(f"\n{task}: {len({r['trial'] for r in mine})} trials, {len(mine)} checkpoints, "
              f"true accuracy {acc.min():.1f}..{acc.max():.1f}, {n_target} target images, "
              f"evaluation {eval_s:.2f} s")
        print(f"  {'validator':22} {'spearman':>8} {'kendall':>8} {'gap':>6} {'HV ratio':>8} "
              f"{'cost':>12}")
        for name in ("target_acc_last", *VALIDATORS):
            if not all(name in r for r in mine):
                continue
            score = np.array([r[name] for r in mine], dtype=float)
            finite = np.isfinite(score)
            rho = spearmanr(score[finite], acc[finite]).statistic
            tau = kendalltau(score[finite], acc[finite]).statistic
            gap, ratio = selection_gap(acc, score), front_ratio(mine, name)
            if name.startswith("proxy_mixval"):
                cost = f"{np.median([r['mixval_cost_ratio'] for r in mine]):.0%} of eval"
            else:
                cost = f"{costs[name] * 1e3:.1f} ms" if name in costs else "1 pass"
            print(f"  {name:22} {rho:8.3f} {tau:8.3f} {gap:6.2f} {ratio:8.3f} {cost:>12}")
            for key, value in (("spearman", rho), ("kendall", tau), ("gap", gap),
                               ("hv_ratio", ratio)):
                table.setdefault(name, {}).setdefault(key, []).append(float(value))
    print(f"\nmean over {len(tasks)} tasks")
    print(f"  {'validator':22} {'spearman':>8} {'kendall':>8} {'gap':>6} {'HV ratio':>8}")
    for name, stats in table.items():
        if len(stats["gap"]) == len(tasks):
            print(f"  {name:22} {np.mean(stats['spearman']):8.3f} {np.mean(stats['kendall']):8.3f}"
                  f" {np.mean(stats['gap']):6.2f} {np.mean(stats['hv_ratio']):8.3f}")


def mixval_cost(n: int = 2000, repeats: int = 2) -> None:
    """MixVal's extra forwards over the evaluation pass that scores everything else, in one run:
    `tiny-vit-test` (tests/model_configs) on n random 32 px images, 1 thread."""
    from contextlib import nullcontext

    import open_clip
    import torch

    from vlpuda.trainables.decoded import decoded_from_arrays
    from vlpuda.trainables.scoring import Forward, score_target
    from vlpuda.trainables.student import Student

    open_clip.add_model_config(Path(__file__).parents[1] / "tests/model_configs/tiny-vit-test.json")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = open_clip.create_model("tiny-vit-test")
    images = np.random.default_rng(0).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    domain = decoded_from_arrays("random", [str(i) for i in range(10)],
                                 np.full(n, -1, dtype=np.int64), images, images, labelled=False)
    prototypes = torch.nn.functional.normalize(torch.randn(10, model.visual.output_dim), dim=1)
    student = Student(model.visual, prototypes, 100.0)
    fwd = Forward((0.5,) * 3, (0.5,) * 3, torch.device("cpu"), 256, nullcontext())
    for _ in range(repeats):  # the first call warms up
        scores = score_target(student, domain, fwd)
    print(f"mixval_cost_ratio {scores['mixval_cost_ratio']:.3f} (bound 0.25), evaluation "
          f"{scores['eval_seconds']:.2f} s for {n} images")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("run", "analyse", "all", "mixval-cost"))
    parser.add_argument("--out", default="runs/bench-validators", type=Path)
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--iters-per-epoch", type=int, default=50, help="the demo's 50")
    parser.add_argument("--teacher-steps", type=int, default=300, help="the demo's 300")
    parser.add_argument("--tasks", type=int, nargs="*", default=list(range(len(TASKS))),
                        help="indices into TASKS (run several processes, one per task)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step in ("run", "all"):
        run(args.out, args.trials, args.iters_per_epoch, args.tasks, args.teacher_steps)
    if args.step in ("analyse", "all"):
        analyse(args.out)
    if args.step == "mixval-cost":
        mixval_cost()
    return 0


if __name__ == "__main__":
    sys.exit(main())
