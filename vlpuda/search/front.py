"""The accuracy-vs-stored-parameters front of a study: rows, hypervolume, table, files.

Only COMPLETE trials count: trials stopped early or over the storage budget are PRUNED (see
searcher.py), so every point on the front ran the full budget. The front is computed with
vlpuda.search.pareto and is the same set of trials as Optuna's `study.best_trials`. Sparsity-
ladder points (a complete trial's delta cut to a fraction of its changed weights, user attribute
`ladder`) that no trial or other ladder point dominates are added as derived points of their
parent trial, listed after the trials; the hypervolume is that of trials and ladder points.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from vlpuda.search.gap import SelectionGap, selection_gap
from vlpuda.search.pareto import default_reference, hypervolume_2d, pareto_front_mask
from vlpuda.search.study import LADDER, OBJECTIVE, STOP_DETAIL, STOP_REASON, TUNE_TRIAL_ID
from vlpuda.search.settings import METRICS, MODES

FRONT_CSV = "front.csv"
FRONT_JSON = "front.json"
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
    return Front(on_front, hypervolume, reference, states, names, derived_on, metrics, gap)


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


TRUTH_COLUMNS = ("target_acc", "target_acc_selected", "target_acc_last", "target_acc_class_mean")


def front_columns(front: Front) -> list[str]:
    """The printed columns: the objectives, the true accuracies the rows hold (none for an
    unlabeled target), ladder columns only when the front holds ladder points."""
    rows = front_rows(front)
    truth = [c for c in TRUTH_COLUMNS
             if c not in front.metrics and any(r.get(c) is not None for r in rows)]
    return ["trial", *(LADDER_COLUMNS if front.derived else ()), *front.metrics, *truth,
            *front.param_names]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    """A plain fixed-width table: header, rule, one line per row."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return lines


def format_front(front: Front, title: str = "Pareto front") -> str:
    """The front as printed at the end of a search and by `vlpuda pareto`."""
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(front.states.items()))
    lines = [f"{title}: {len(front.trials)} non-dominated of "
             f"{front.states.get('COMPLETE', 0)} complete trials ({counts or 'no trials'})"
             + (f", then {len(front.derived)} sparsity-ladder point(s) (parent_trial's delta "
                "cut to fraction of its changed weights)" if front.derived else "")]
    if not front.trials:
        lines.append("  no complete trial yet: nothing to show")
        return "\n".join(lines)
    lines += ["  " + line for line in format_table(front_rows(front), front_columns(front))]
    ref = front.reference or (0.0, 0.0)
    labelled = any(c in front_columns(front) for c in ("target_acc", "target_acc_last"))
    lines.append(f"  hypervolume {front.hypervolume:.6g} (reference: {front.metrics[0]} "
                 f"{ref[0]:g}, stored_params {ref[1]:,.0f})"
                 + ("; target_acc is the best epoch's accuracy (oracle selection), "
                    "target_acc_selected the kept epoch's, target_acc_last the last epoch's, "
                    "target_acc_class_mean the last epoch's mean of per-class accuracies"
                    if labelled else ""))
    if front.metrics[0] != METRICS[0]:
        lines.append(f"  {front.metrics[0]}: the kept epoch's score (its selection metric)")
        if front.gap is not None:
            lines.append(f"  {front.gap.describe()}")
        elif not labelled:
            lines.append("  the target is unlabeled: no true accuracy to compare with")
    return "\n".join(lines)


def trial_table(study: optuna.Study) -> str:
    """Every trial with its state, values and the reason it was stopped, for `pareto --all`."""
    trials = study.get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in t.params})
    first = next((t.user_attrs[OBJECTIVE] for t in trials if OBJECTIVE in t.user_attrs),
                 METRICS[0])
    rows = []
    for t in trials:
        values = t.values or [None, None]
        rows.append({"trial": t.number, "state": t.state.name, first: values[0],
                     METRICS[1]: None if values[1] is None else int(values[1]),
                     "epoch": t.user_attrs.get("epoch"),
                     "why": t.user_attrs.get(STOP_DETAIL) or t.user_attrs.get(STOP_REASON),
                     **{n: t.params.get(n) for n in names}})
    columns = ["trial", "state", first, METRICS[1], "epoch", "why", *names]
    return "\n".join(format_table(rows, columns))


def write_front(front: Front, run_dir: Path) -> list[Path]:
    """front.csv and front.json in the run dir (files users exchange: never pickle)."""
    rows = front_rows(front)
    run_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = run_dir / FRONT_JSON, run_dir / FRONT_CSV
    json_path.write_text(json.dumps({
        "hypervolume": front.hypervolume,
        "reference": list(front.reference) if front.reference else None,
        "objectives": list(front.metrics),
        **({"selection_gap": front.gap.as_dict()} if front.gap else {}),
        "trials": rows,
    }, indent=2))
    with open(csv_path, "w", newline="") as handle:
        columns = list(rows[0]) if rows else ["trial", *METRICS]
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return [csv_path, json_path]
