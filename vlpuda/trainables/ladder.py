"""The sparsity ladder: one trial's delta cut down to a few sparser, real deltas.

A complete trial stores one delta, but that delta holds a whole accuracy-vs-storage curve: keeping
only its largest changes |w - w0| gives a sparser delta that is often nearly as accurate. At the
end of a trial the selected (best-epoch) delta is cut to 1/2, 1/4, ... 1/2^n of its changed
weights, each cut nested in the previous one, and each cut is scored on the target like any delta.
The search puts them on the front as derived points of their trial (never as Optuna trials: they
are not samples of the space).

Metric names: `ladder_<d>/<metric>` for the cut keeping 1/d of the changed weights (d = 2, 4, 8),
plus `ladder_seconds` (what the ladder cost) and `ladder_share` (that as a share of the trial's
training time); the cut's delta is `ladder_<d>.safetensors` beside the trial's best delta.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vlpuda.trainables.rst import ResidualSparsity, apply_delta_, load_delta

LADDER_KEY = re.compile(r"^ladder_(\d+)/(.+)$")
LADDER_SECONDS = "ladder_seconds"
LADDER_SHARE = "ladder_share"


def ladder_file(denominator: int) -> str:
    return f"ladder_{denominator}.safetensors"


def keep_counts(changed: int, steps: int) -> list[int]:
    """Changed weights each rung keeps: floor(changed / 2^i) for i = 1..steps."""
    return [changed >> i for i in range(1, steps + 1)]


@torch.no_grad()
def truncate_largest(weights: torch.Tensor, weights0: torch.Tensor, keep: int) -> torch.Tensor:
    """A copy of the flat `weights` in which only the `keep` entries of largest |w - w0| keep
    their trained value; every other entry is w0 exactly. Exactly `keep` entries (ties broken by
    topk), so the stored count is known before anything is scored."""
    result = weights0.clone()
    if keep <= 0:
        return result
    magnitude = torch.sub(weights, weights0).abs_()
    kept = torch.topk(magnitude, keep, sorted=False).indices
    result[kept] = weights[kept]
    return result


def ladder_metrics(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The points as flat report keys: ladder_<d>/<metric>."""
    out: dict[str, Any] = {}
    for point in points:
        denominator = round(1 / point["fraction"])
        out.update({f"ladder_{denominator}/{name}": value for name, value in point.items()})
    return out


def parse_ladder(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The ladder points a trial reported (ladder_metrics inverted), densest first."""
    points: dict[int, dict[str, Any]] = {}
    for key, value in result.items():
        match = LADDER_KEY.match(key)
        if match:
            points.setdefault(int(match.group(1)), {})[match.group(2)] = value
    return [points[d] for d in sorted(points)]


@torch.no_grad()
def score_ladder(sparsity: ResidualSparsity, head: torch.nn.Module, visual: torch.nn.Module,
                 selected: Path, steps: int, score: Callable[[], dict[str, Any]],
                 save: Callable[[Path], Any], directory: Path) -> tuple[list[dict], float]:
    """Cut the selected delta (file `selected`) `steps` times and score each cut.

    The model is loaded with each cut in turn (`score()` evaluates it, `save(path)` writes it
    as a delta file) and given back its current weights and head afterwards.
    Returns (points, seconds spent).
    """
    started = time.perf_counter()
    current, current_head = sparsity.weights.clone(), {
        k: v.clone() for k, v in head.state_dict().items()}
    delta = load_delta(selected)
    sparsity.weights.copy_(sparsity.weights0)
    apply_delta_(visual, delta)  # the parameters are views of sparsity.weights
    head.load_state_dict(delta.head_state)
    cut = sparsity.weights.clone()
    changed = int(torch.count_nonzero(cut != sparsity.weights0))
    head_params = sum(p.numel() for p in head.parameters())
    points = []
    try:
        for i, keep in enumerate(keep_counts(changed, steps), start=1):
            cut = truncate_largest(cut, sparsity.weights0, keep)  # nested in the previous cut
            sparsity.weights.copy_(cut)
            scores = score()
            save(directory / ladder_file(2 ** i))
            oracle = ({"target_acc": scores["target_acc_last"]} if "target_acc_last" in scores
                      else {})  # absent for an unlabeled target
            points.append({"fraction": 2.0 ** -i, **oracle,
                           **scores, "stored_params": keep + head_params,
                           "changed_params": keep})
    finally:
        sparsity.weights.copy_(current)
        head.load_state_dict(current_head)
    return points, time.perf_counter() - started
