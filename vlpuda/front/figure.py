"""The accuracy-vs-stored-parameters figure of a search.

Stored parameters span orders of magnitude (a linear probe's 35 k to full fine-tuning's 86 M), so
the x axis is logarithmic. Dominated trials are drawn faint, the front solid with the staircase it
defines (the best accuracy reachable within each storage budget), and the paper's results for the
same benchmark and backbone as references.

Built on a bare `matplotlib.figure.Figure`: no pyplot, so no global figure state and no GUI
backend in the Tune driver process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial

from vlpuda.front.references import ReferencePoint
from vlpuda.front.trials import Front
from vlpuda.naming import trial_label

FRONT_COLOUR = "#c2185b"
TRIAL_COLOUR = "#546e7a"
REFERENCE_COLOURS = ("#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#795548")


@dataclass(frozen=True)
class TrialPoint:
    """One complete trial on the figure."""

    number: int  # the Optuna trial number, as `vlpuda pareto` prints it (labelled t03)
    target_acc: float
    stored_params: float
    on_front: bool
    label: str | None = None  # a ladder point: "t07 @1/4" (trial 7's delta cut to a quarter)


def _draw_trials(ax, points: Sequence[TrialPoint]) -> None:
    dominated = [p for p in points if not p.on_front]
    front = sorted((p for p in points if p.on_front), key=lambda p: (p.stored_params,
                                                                      -p.target_acc))
    if dominated:
        ax.scatter([p.stored_params for p in dominated], [p.target_acc for p in dominated],
                   s=22, color=TRIAL_COLOUR, alpha=0.3, label="dominated trials", zorder=2)
    if not front:
        return
    xs, ys = [p.stored_params for p in front], [p.target_acc for p in front]
    # where="post": a front point's accuracy holds until the next, larger budget buys more.
    ax.step(xs, ys, where="post", color=FRONT_COLOUR, linewidth=1.5, zorder=3)
    ax.scatter(xs, ys, s=40, color=FRONT_COLOUR, label="Pareto front", zorder=4)
    for p in front:
        ax.annotate(p.label or trial_label(p.number), (p.stored_params, p.target_acc),
                    textcoords="offset points",
                    xytext=(4, 4), fontsize=7, color=FRONT_COLOUR)


def _draw_references(ax, references: Sequence[ReferencePoint]) -> None:
    colours = iter(REFERENCE_COLOURS * 4)
    series: dict[str, list[ReferencePoint]] = {}
    for ref in references:
        if ref.series:
            series.setdefault(ref.series, []).append(ref)
        elif ref.stored_params <= 0:  # zero-shot: nothing stored, no place on a log axis
            ax.axhline(ref.target_acc, color=next(colours), linestyle=":", linewidth=1,
                       label=ref.label, zorder=1)
        else:
            ax.scatter([ref.stored_params], [ref.target_acc], marker="X", s=55,
                       color=next(colours), label=ref.label, zorder=3)
    for name, refs in series.items():
        refs = sorted(refs, key=lambda r: r.stored_params)
        colour = next(colours)
        ax.plot([r.stored_params for r in refs], [r.target_acc for r in refs], linestyle="--",
                marker="^", markersize=5, color=colour, linewidth=1, label=name, zorder=2)
        for ref in refs:
            ax.annotate(ref.label.removeprefix("Fig. 4 "), (ref.stored_params, ref.target_acc),
                        textcoords="offset points", xytext=(4, -9), fontsize=6, color=colour)


def front_figure(points: Sequence[TrialPoint], references: Sequence[ReferencePoint],
                 title: str) -> Figure:
    """Target accuracy against stored parameters for the complete trials of a search.

    Args:
        points: every complete trial, with whether it is on the front.
        references: the paper's results to draw beside them (may be empty).
        title: the figure's title (search name, task, backbone).
    """
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    _draw_trials(ax, points)
    _draw_references(ax, references)
    if any(p.stored_params > 0 for p in points) or any(r.stored_params > 0 for r in references):
        ax.set_xscale("log")
    ax.set_xlabel("stored parameters (visual delta + head, summed over tasks; log scale)")
    ax.set_ylabel("target accuracy, % (best epoch: oracle selection)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    return fig


def trial_points(trials: list[FrozenTrial], values: np.ndarray, on_front: np.ndarray
                 ) -> list[TrialPoint]:
    """One point per trial at `values` (accuracy, stored_params), marked where on the front."""
    return [TrialPoint(t.number, float(v[0]), float(v[1]), bool(m))
            for t, v, m in zip(trials, values, on_front)]


def ladder_figure_points(front: Front, true_accuracy: bool = True) -> list[TrialPoint]:
    """The front's sparsity-ladder points, labelled by parent trial and fraction ("t07 @1/4"),
    at their true accuracy (or, for an unlabeled target, their objective's score)."""
    first = "target_acc" if true_accuracy else front.metrics[0]
    return [TrialPoint(t.number, float(p[first]), float(p[front.metrics[1]]), True,
                       f"{trial_label(t.number)} @1/{round(1 / p['fraction'])}")
            for t, p in front.derived]
