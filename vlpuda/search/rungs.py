"""The rung maths of multi-objective asynchronous successive halving (MOASHA), as pure functions.

A trial reaching a rung is compared with every trial recorded there before it. The candidates
are ordered by non-dominated sorting (front after front) and, within each front, by an epsilon-net
(greedy farthest-first traversal on min-max normalised axes, started at the member best in the
first objective), so a front's extremes come before its crowded middle. The trial continues iff
it is among the best floor(N / eta) + 1 of the N candidates, i.e. iff position / N <= 1 / eta
(docs/search.md#early-stopping-moasha; the same inequality as single-objective ASHA's quantile
cut).

Every vector here is in minimisation form: `signed_vector` flips maximised objectives and puts
storage on a log axis, so one trial storing 10x less counts as much at 1e4 as at 1e7 parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from vlpuda.front.pareto import non_dominated_ranks


def rung_levels(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """Epochs at which trials are judged: grace * eta^k while below max_t (a rung at max_t
    decides nothing, every trial there is complete). Integer epochs, duplicates dropped."""
    levels: list[int] = []
    k = 0
    while True:
        # round() before int(): 5 * 3.0**2 must be 45, not 44.99999.
        level = int(round(grace_period * reduction_factor ** k, 9))
        if level >= max_t:
            return levels
        if not levels or level > levels[-1]:
            levels.append(level)
        k += 1


def signed_vector(values: Sequence[float], modes: Sequence[str],
                  log_axes: Sequence[bool]) -> tuple[float, ...] | None:
    """The objectives as one vector to minimise (None if any is missing, non-finite, or not
    positive on a log axis)."""
    out = []
    for value, mode, log in zip(values, modes, log_axes, strict=True):
        if value is None:
            return None
        value = float(value)
        if not math.isfinite(value) or (log and value <= 0):
            return None
        value = math.log10(value) if log else value
        out.append(-value if mode == "max" else value)
    return tuple(out)


def epsilon_net_order(points: np.ndarray) -> list[int]:
    """Farthest-first order of the rows of `points` (already normalised, minimised): start at the
    row best in column 0, then repeatedly take the row farthest from its nearest chosen row.
    Ties go to the lower index (the earlier recorded trial)."""
    n = len(points)
    if n == 0:
        return []
    # lexsort: column 0 first, then the later columns, then the index (stable).
    first = int(np.lexsort(points.T[::-1])[0])
    order = [first]
    nearest = np.linalg.norm(points - points[first], axis=1)
    nearest[first] = -1.0
    while len(order) < n:
        pick = int(np.argmax(nearest))  # argmax returns the first maximum: lowest index
        order.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[pick], axis=1))
        nearest[order] = -1.0
    return order


def normalise(points: np.ndarray) -> np.ndarray:
    """Each column min-max scaled to [0, 1] over the rows; a column with no range becomes 0."""
    low, high = points.min(axis=0), points.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return (points - low) / span


def pareto_order(vectors: Sequence[Sequence[float]]) -> tuple[list[int], list[int]]:
    """All candidates in MOASHA order: fronts in turn, an epsilon-net within each.

    Returns (order, front of each candidate, 0-based).
    """
    points = np.asarray(vectors, dtype=float)
    if len(points) == 0:
        return [], []
    fronts = non_dominated_ranks(points, ["minimize"] * points.shape[1])
    scaled = normalise(points)
    order: list[int] = []
    for front in range(int(fronts.max()) + 1):
        members = np.flatnonzero(fronts == front)
        order += [int(members[i]) for i in epsilon_net_order(scaled[members])]
    return order, [int(f) for f in fronts]


def kept_at_rung(candidates: int, reduction_factor: float) -> int:
    """How many of N candidates continue: floor(N / eta) + 1 (position / N <= 1 / eta)."""
    return int(math.floor(candidates / reduction_factor + 1e-9)) + 1


def rung_decision(recorded: Sequence[Sequence[float]], new: Sequence[float],
                  reduction_factor: float) -> tuple[bool, int, int, int]:
    """Whether the trial with vector `new` continues past a rung already holding `recorded`.

    Returns (continues, its 0-based position, N candidates, its front). The first trial at a
    rung always continues (N = 1), as in Ray's ASHA.
    """
    candidates = [*recorded, new]
    order, fronts = pareto_order(candidates)
    position = order.index(len(candidates) - 1)
    n = len(candidates)
    return position < kept_at_rung(n, reduction_factor), position, n, fronts[-1]
