"""Pareto maths for the accuracy-vs-stored-parameters front: pure numpy, no Ray, no Optuna.

Every function takes `values` of shape (n points, m objectives) and one direction per column,
"maximize" or "minimize" (Ray's "max"/"min" are accepted too, since the searcher's modes are
written that way). Internally every column is turned into one to minimise, so the dominance test
and the hypervolume sweep are written once.

Dominance: a dominates b iff a is no worse than b in every objective and strictly better in at
least one. So identical points never dominate each other: duplicates share a rank, and a repeated
configuration cannot push its twin off the front.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_SIGN = {"maximize": -1.0, "max": -1.0, "minimize": 1.0, "min": 1.0}


def _directions_signs(directions: Sequence[str]) -> np.ndarray:
    """+1 for a column to minimise, -1 for one to maximise; rejects anything else."""
    unknown = [d for d in directions if d not in _SIGN]
    if unknown:
        raise ValueError(f"directions must be 'maximize' or 'minimize', got {unknown}")
    return np.array([_SIGN[d] for d in directions], dtype=float)


def _as_minimization(
    values: np.ndarray | Sequence[Sequence[float]], directions: Sequence[str]
) -> np.ndarray:
    """The (n, m) float array with maximised columns negated, after checking shape and NaNs."""
    signs = _directions_signs(directions)
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        # An empty list of trials has no second axis to read m from.
        return np.empty((0, len(signs)))
    if array.ndim != 2 or array.shape[1] != len(signs):
        raise ValueError(
            f"values must have shape (n, {len(signs)}) for {len(signs)} directions, "
            f"got {array.shape}"
        )
    # NaN compares false both ways, so a NaN point would sit on the front dominating nothing and
    # dominated by nothing; a trial without a metric must be dropped before it gets here.
    if np.isnan(array).any():
        raise ValueError("values contain NaN: drop trials without both metrics first")
    return array * signs


def _domination_matrix(costs: np.ndarray) -> np.ndarray:
    """dominates[i, j] is True iff point i dominates point j (all columns minimised)."""
    no_worse = (costs[:, None, :] <= costs[None, :, :]).all(axis=2)
    strictly_better = (costs[:, None, :] < costs[None, :, :]).any(axis=2)
    return no_worse & strictly_better


def non_dominated_ranks(
    values: np.ndarray | Sequence[Sequence[float]], directions: Sequence[str]
) -> np.ndarray:
    """Rank every point by fast non-dominated sorting.

    Rank 0 is the Pareto front, rank 1 the front of what remains once rank 0 is removed, and so on.
    The dominance matrix is built at once (O(m n^2) time and n^2 booleans), which is fine for
    the hundreds of trials a search runs.

    Args:
        values: (n, m) objective values, one row per point.
        directions: m entries, each "maximize" or "minimize".

    Returns:
        (n,) int64 ranks; an empty array when n == 0.

    Raises:
        ValueError: on a shape that does not match the directions, an unknown direction or NaN.
    """
    costs = _as_minimization(values, directions)
    n = costs.shape[0]
    ranks = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return ranks
    dominates = _domination_matrix(costs)
    dominated_by = dominates.sum(axis=0)
    front = np.flatnonzero(dominated_by == 0)
    rank = 0
    # Peel the layers: removing a front lowers the counts of what it dominated; every point
    # whose count reaches zero forms the next front. Each row is subtracted once: O(n^2) total.
    while front.size:
        ranks[front] = rank
        dominated_by = dominated_by - dominates[front].sum(axis=0)
        dominated_by[ranks >= 0] = -1
        front = np.flatnonzero(dominated_by == 0)
        rank += 1
    return ranks


def pareto_front_mask(
    values: np.ndarray | Sequence[Sequence[float]], directions: Sequence[str]
) -> np.ndarray:
    """Boolean mask of the non-dominated points (rank 0); duplicates on the front are all kept.

    Args:
        values: (n, m) objective values.
        directions: m entries, each "maximize" or "minimize".

    Returns:
        (n,) bool array.
    """
    return non_dominated_ranks(values, directions) == 0


def hypervolume_2d(
    values: np.ndarray | Sequence[Sequence[float]],
    directions: Sequence[str],
    reference: Sequence[float],
) -> float:
    """Exact area dominated by the points and bounded by the reference point, for two objectives.

    The reference should be worse than every point of interest in both objectives. A point that is
    not strictly better than the reference in both objectives bounds no area and contributes
    nothing. Sorting by the first objective and sweeping a staircase makes this O(n log n).

    Args:
        values: (n, 2) objective values.
        directions: two entries, each "maximize" or "minimize".
        reference: the reference point, in the objectives' own units and signs.

    Returns:
        The dominated area (0.0 for no points or none better than the reference).

    Raises:
        ValueError: when there are not exactly two objectives, or on a bad shape or NaN.
    """
    if len(directions) != 2 or len(reference) != 2:
        raise ValueError("hypervolume_2d needs exactly two directions and a 2-d reference")
    costs = _as_minimization(values, directions)
    ref = np.asarray(reference, dtype=float) * _directions_signs(directions)
    inside = costs[(costs[:, 0] < ref[0]) & (costs[:, 1] < ref[1])]
    if inside.shape[0] == 0:
        return 0.0
    # lexsort's last key is primary: by the first objective, ties broken by the second, so of two
    # points sharing an x only the better one (seen first) adds a step.
    order = np.lexsort((inside[:, 1], inside[:, 0]))
    area = 0.0
    ceiling = ref[1]
    for x, y in inside[order]:
        if y < ceiling:
            area += (ref[0] - x) * (ceiling - y)
            ceiling = y
    return float(area)


def hypervolume_history(
    values: np.ndarray | Sequence[Sequence[float]],
    directions: Sequence[str],
    reference: Sequence[float],
) -> np.ndarray:
    """Hypervolume of the first k points, for k = 1..n (rows in completion order).

    Use one fixed reference for the whole history (e.g. `default_reference` of all points), or the
    curve is not monotone and the steps cannot be compared.

    Args:
        values: (n, 2) objective values in the order the trials finished.
        directions: two entries, each "maximize" or "minimize".
        reference: the reference point shared by every prefix.

    Returns:
        (n,) float array, non-decreasing.
    """
    array = np.asarray(values, dtype=float)
    return np.array(
        [hypervolume_2d(array[: k + 1], directions, reference) for k in range(array.shape[0])],
        dtype=float,
    )


def _worse_than(worst: float, sign: float) -> float:
    """A tenth of |worst| beyond `worst` (1 beyond 0), in the objective's bad direction."""
    margin = 0.1 * abs(worst) if worst != 0.0 else 1.0
    return worst + sign * margin


def default_reference(
    values: np.ndarray | Sequence[Sequence[float]], directions: Sequence[str]
) -> tuple[float, ...]:
    """A reference point strictly worse than every observed point in every objective.

    Choice, per column:
    - minimise (stored parameters): 1.1 x the largest observed value (the largest plus a tenth of
      its magnitude when it is not positive, or 1 when it is 0). Every point then contributes, and
      the densest trial still adds a sliver of area.
    - maximise (accuracy): 0 when every observed value is positive, since accuracy cannot go below
      it and 0 keeps the area readable as "accuracy x parameters saved"; otherwise the smallest
      value minus a tenth of its magnitude (minus 1 when it is 0).

    The reference depends on the data: compare hypervolumes only under one shared reference, e.g.
    the one computed from all trials at the end of the search.

    Args:
        values: (n, m) objective values, n >= 1.
        directions: m entries, each "maximize" or "minimize".

    Returns:
        One reference value per objective.

    Raises:
        ValueError: when there are no points to take the reference from.
    """
    costs = _as_minimization(values, directions)
    if costs.shape[0] == 0:
        raise ValueError("default_reference needs at least one point")
    signs = _directions_signs(directions)
    reference: list[float] = []
    for column, sign in zip(costs.T, signs):
        worst = float(column.max() * sign)  # back in the objective's own units
        if sign < 0 and worst > 0.0:
            reference.append(0.0)
        else:
            reference.append(float(_worse_than(worst, float(sign))))
    return tuple(reference)
