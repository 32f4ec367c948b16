"""The accuracy-vs-stored-parameters front of a study: its trials, rows, ranks and hypervolume.

Only COMPLETE trials count: trials stopped early or over the storage budget are PRUNED (see
search/searcher.py), so every point on the front ran the full budget. The front is computed with
vlpuda.front.pareto and is the same set of trials as Optuna's `study.best_trials`. Sparsity-
ladder points (a complete trial's delta cut to a fraction of its changed weights, user attribute
`ladder`) that no trial or other ladder point dominates are added as derived points of their
parent trial, listed after the trials; the hypervolume is that of trials and ladder points.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from vlpuda.front.gap import SelectionGap, selection_gap
from vlpuda.front.pareto import (
    default_reference,
    hypervolume_2d,
    hypervolume_history,
    non_dominated_ranks,
    pareto_front_mask,
)
from vlpuda.objectives import LADDER, METRICS, MODES, OBJECTIVE, TUNE_TRIAL_ID, task_metric

LADDER_COLUMNS = ("parent_trial", "fraction")


@dataclass
class Front:
    """The non-dominated complete trials of a study, best accuracy first."""

    trials: list[FrozenTrial]
    hypervolume: float
    reference: tuple[float, ...] | None
    states: Counter = field(default_factory=Counter)  # trial counts by state name
    param_names: list[str] = field(default_factory=list)
    # Sparsity-ladder points on the front: (parent trial, its ladder point), best accuracy first.
    derived: list[tuple[FrozenTrial, dict[str, Any]]] = field(default_factory=list)
    metrics: tuple[str, ...] = METRICS  # result keys of the two objectives
    gap: SelectionGap | None = None  # label-free objective on a labelled target only
    # Every complete trial and its non-dominated rank (0: on the front, 1: on the front of the
    # rest, ...), in the study's order: the pareto tags and the figure's points.
    complete: list[FrozenTrial] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)

    @property
    def numbers(self) -> list[int]:
        return [t.number for t in self.trials]


def ladder_candidates(complete: list[FrozenTrial], metrics: tuple[str, ...]
                      ) -> list[tuple[FrozenTrial, dict[str, Any]]]:
    """Every complete trial's ladder points that carry both objectives (`metrics`)."""
    return [(t, point) for t in complete for point in t.user_attrs.get(LADDER) or []
            if all(isinstance(point.get(m), (int, float)) for m in metrics)]


def complete_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count on a front: COMPLETE, with both objective values."""
    return [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]


def front_of(trials: list[FrozenTrial]) -> Front:
    """The Pareto front of a study's COMPLETE trials (`study.get_trials()`) and its hypervolume.

    The hypervolume's reference point is taken from all complete trials (pareto.default_reference:
    accuracy 0, 1.1 x the largest stored count), so it grows only when the front improves.
    """
    states = Counter(t.state.name for t in trials)
    complete = complete_trials(trials)
    if not complete:
        return Front([], 0.0, None, states)
    # The searcher records the first objective's key on every trial it asks for.
    metrics = (complete[-1].user_attrs.get(OBJECTIVE, METRICS[0]), METRICS[1])
    values = np.array([t.values for t in complete], dtype=float)
    mask = pareto_front_mask(values, MODES)
    on_front = [t for t, keep in zip(complete, mask) if keep]
    on_front.sort(key=lambda t: (-t.values[0], t.values[1]))
    # Ladder points join as derived points where nothing (trial or ladder point) dominates
    # them; the trials' own front stays Optuna's best_trials, as MLflow's pareto tags say.
    derived = ladder_candidates(complete, metrics)
    every = np.vstack([values, [[p[m] for m in metrics] for _, p in derived]]) \
        if derived else values
    every_mask = pareto_front_mask(every, MODES)
    derived_on = [d for d, keep in zip(derived, every_mask[len(complete):]) if keep]
    derived_on.sort(key=lambda d: (-d[1][metrics[0]], d[1][metrics[1]]))
    reference = default_reference(every, MODES)
    hypervolume = hypervolume_2d(every[every_mask], MODES, reference)
    names = sorted({name for t in complete for name in t.params})
    gap = selection_gap(complete, on_front) if metrics[0] != METRICS[0] else None
    ranks = [int(r) for r in non_dominated_ranks(values, MODES)]
    return Front(on_front, hypervolume, reference, states, names, derived_on, metrics, gap,
                 complete, ranks)


def front_rows(front: Front) -> list[dict[str, Any]]:
    """One flat dict per front trial: number, objectives, true accuracies (where the target has
    labels: the oracle's best, the kept epoch's, the last epoch's), parameters."""
    rows = []
    for t in front.trials:
        truth = ({"target_acc": t.user_attrs.get("target_acc"),
                  "target_acc_selected": t.user_attrs.get("target_acc_selected")}
                 if front.metrics[0] != METRICS[0] else {})
        rows.append({
            "trial": t.number,
            front.metrics[0]: t.values[0],
            front.metrics[1]: int(t.values[1]),
            **truth,
            "target_acc_last": t.user_attrs.get("target_acc_last"),
            "target_acc_class_mean": t.user_attrs.get("target_acc_class_mean"),
            **{name: t.params.get(name) for name in front.param_names},
            TUNE_TRIAL_ID: t.user_attrs.get(TUNE_TRIAL_ID),
            "checkpoint_path": t.user_attrs.get("checkpoint_path"),
        })
    if not front.derived:
        return rows
    # A ladder point is its parent trial's delta cut to `fraction` of its changed weights.
    rows = [{**row, **dict.fromkeys(LADDER_COLUMNS)} for row in rows]
    for t, point in front.derived:
        rows.append({
            "trial": None, front.metrics[0]: point[front.metrics[0]],
            front.metrics[1]: int(point[front.metrics[1]]),
            "target_acc_last": point.get("target_acc_last"),
            "target_acc_class_mean": point.get("target_acc_class_mean"),
            **{name: t.params.get(name) for name in front.param_names},
            TUNE_TRIAL_ID: t.user_attrs.get(TUNE_TRIAL_ID),
            "checkpoint_path": t.user_attrs.get("checkpoint_path"),
            "parent_trial": t.number, "fraction": point["fraction"],
        })
    return rows  # trials first (as Optuna's best_trials), then their ladder points




def trial_values(trials: list[FrozenTrial]) -> np.ndarray:
    """The (n, 2) objective values of complete trials."""
    return np.array([t.values for t in trials], dtype=float).reshape(-1, 2)


def selected_accuracy(complete: list[FrozenTrial]) -> np.ndarray | None:
    """(true accuracy of the kept epoch, stored_params) per trial, or None without labels."""
    selected = [t.user_attrs.get("target_acc_selected") for t in complete]
    if any(a is None for a in selected):
        return None
    return np.column_stack([np.array(selected, dtype=float), trial_values(complete)[:, 1]])


# ---- in the order trials finished -------------------------------------------------------------


def trial_millis(trial: FrozenTrial) -> int:
    """When a trial finished (else started), in milliseconds since the epoch; 0 if unknown."""
    when = trial.datetime_complete or trial.datetime_start
    return int(when.timestamp() * 1000) if when else 0


def finished_in_order(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """A study's finished trials in the order they finished."""
    done = [t for t in trials if t.state.is_finished()]
    return sorted(done, key=lambda t: (trial_millis(t), t.number))


def hypervolume_steps(finished: list[FrozenTrial], reference: tuple[float, ...] | None,
                      metrics: tuple[str, ...] = METRICS) -> list[float]:
    """The front's hypervolume after each finished trial (entry k-1: k trials finished).

    One reference for every step (the final front's), so the curve only rises when the front
    improves; pruned and failed trials repeat the previous value. A complete trial's
    sparsity-ladder points count as the front counts them.
    """
    points: list[list[float]] = []
    ends = []  # how many points the front holds after each finished trial
    for trial in finished:
        if trial.state == TrialState.COMPLETE and trial.values is not None:
            points.append(list(trial.values))
            points += [[p[m] for m in metrics] for _, p in ladder_candidates([trial], metrics)]
        ends.append(len(points))
    if not points or not reference:
        return [0.0] * len(finished)
    history = hypervolume_history(points, MODES, reference)
    return [float(history[end - 1]) if end else 0.0 for end in ends]


# ---- one task's own front in a multi-task search ----------------------------------------------


@dataclass
class TaskFront:
    """One task's front: its accuracy against its stored parameters, from each complete trial's
    last result for that task."""

    task: str
    trials: list[FrozenTrial]  # the complete trials with this task's final results
    values: np.ndarray  # (n, 2): target_acc, stored_params
    ranks: np.ndarray  # non-dominated rank of each
    rows: list[dict[str, Any]]  # the front's rows, best accuracy first
    columns: list[str]
    hypervolume: float


def task_front(task: str, complete: list[FrozenTrial],
               last_results: Mapping[str, Mapping[str, Any]]) -> TaskFront | None:
    """The front of `task` over the complete trials whose last result (`last_results`, by Tune
    trial id) holds its accuracy and storage; None when none does."""
    acc, stored = task_metric(task, METRICS[0]), task_metric(task, METRICS[1])
    trials, finals = [], []
    for trial in complete:
        last = last_results.get(str(trial.user_attrs.get(TUNE_TRIAL_ID))) or {}
        if last.get(acc) is not None and last.get(stored) is not None:
            trials.append(trial)
            finals.append(last)
    if not trials:
        return None
    values = np.array([[f[acc], f[stored]] for f in finals], dtype=float)
    ranks = non_dominated_ranks(values, MODES)
    names = sorted({n for t in trials for n in t.params})
    rows = []
    for trial, final, rank in zip(trials, finals, ranks):
        if rank != 0:
            continue
        rows.append({"trial": trial.number, "target_acc": final[acc],
                     "stored_params": int(final[stored]),
                     "target_acc_last": final.get(task_metric(task, "target_acc_last")),
                     "target_acc_class_mean": final.get(task_metric(task,
                                                                    "target_acc_class_mean")),
                     **{n: trial.params.get(n) for n in names},
                     TUNE_TRIAL_ID: trial.user_attrs.get(TUNE_TRIAL_ID)})
    rows.sort(key=lambda r: (-r["target_acc"], r["stored_params"]))
    columns = ["trial", *METRICS, "target_acc_last", "target_acc_class_mean", *names,
               TUNE_TRIAL_ID]
    hypervolume = hypervolume_2d(values[ranks == 0], MODES, default_reference(values, MODES))
    return TaskFront(task, trials, values, ranks, rows, columns, float(hypervolume))
