"""The front as text: the printed table, the trial table, and front.csv/front.json.

The CSV text is written by `csv_text` alone, for the run directory and for MLflow alike.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import optuna

from vlpuda.front.trials import LADDER_COLUMNS, Front, front_rows
from vlpuda.layout import FRONT_CSV, FRONT_JSON
from vlpuda.objectives import METRICS, OBJECTIVE, STOP_DETAIL, STOP_REASON

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
        handle.write(csv_text(rows, list(rows[0]) if rows else ["trial", *METRICS]))
    return [csv_path, json_path]


def csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows as CSV (a header, then one line per row); keys outside `columns` are left out."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
