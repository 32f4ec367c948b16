"""The paper's own results as reference points on a front figure.

See docs/method.md#the-papers-reported-results.

Drawn only for the benchmark and backbone a search actually ran, and expressed in the search's
objectives: the mean target accuracy over the search's tasks and the stored parameters summed over
them. The paper sums DSP over a benchmark's tasks, so one task's share is the total divided by the
number of tasks (Office-Home: 12). Rows the paper gives per task (Office-Home, Table I) are
averaged over the search's tasks; rows it gives only as a benchmark mean (the Fig. 4 threshold
sweep, the other benchmarks) are labelled as such. Zero-shot CLIP stores nothing (0 parameters)
and is drawn as a horizontal line rather than a point on the log axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MILLION = 1e6


@dataclass(frozen=True)
class ReferencePoint:
    """One published result, in the search's objectives.

    Attributes:
        label: what it is, as the figure's legend says it.
        target_acc: accuracy in percent (mean over the search's tasks, or the paper's mean).
        stored_params: stored parameters over the search's tasks; 0 for zero-shot CLIP.
        series: points of one curve share it (the Fig. 4 sweep); None for a lone point.
    """

    label: str
    target_acc: float
    stored_params: float
    series: str | None = None


OFFICE_HOME_DOMAINS = {"Art": "Ar", "Clipart": "Cl", "Product": "Pr", "Real_World": "Re",
                       "RealWorld": "Re", "Real World": "Re"}
OFFICE_HOME_TASKS = ("Ar-Cl", "Ar-Pr", "Ar-Re", "Cl-Ar", "Cl-Pr", "Cl-Re", "Pr-Ar", "Pr-Cl",
                     "Pr-Re", "Re-Ar", "Re-Cl", "Re-Pr")

# The paper's Table I (docs/method.md#the-papers-reported-results): per-task accuracy in
# OFFICE_HOME_TASKS order, DSP in millions summed over the 12 tasks.
OFFICE_HOME_TABLE: dict[str, list[tuple[str, tuple[float, ...], float]]] = {
    "RN50": [
        ("CLIP zero-shot", (51.6, 81.9, 82.6, 71.9, 81.9, 82.6, 71.9, 51.6, 82.6, 71.9, 51.6,
                            81.9), 0.0),
        ("Baseline", (52.1, 69.7, 75.2, 52.5, 64.3, 63.9, 56.2, 48.4, 74.9, 68.9, 54.4, 82.7),
         460.4),
        ("CMKD", (65.9, 86.6, 87.3, 74.4, 87.7, 85.8, 75.9, 64.4, 87.9, 79.1, 67.2, 90.0), 460.4),
        ("CMKD+RST", (64.9, 87.3, 87.1, 74.2, 87.5, 85.4, 74.5, 63.0, 88.0, 78.1, 66.5, 89.6),
         1.23),
        ("CMKD+FixMatch", (67.2, 87.3, 87.7, 76.7, 88.2, 86.0, 76.8, 66.8, 88.4, 79.5, 68.4,
                           90.4), 460.4),
    ],
    "ViT-B/16": [
        ("CLIP zero-shot", (67.8, 89.0, 89.8, 82.9, 89.0, 89.8, 82.9, 67.8, 89.8, 82.9, 67.8,
                            89.0), 0.0),
        ("Baseline", (71.2, 83.6, 88.5, 78.9, 85.8, 85.5, 71.9, 71.2, 86.3, 81.8, 73.2, 90.7),
         1034.8),
        ("CMKD", (79.4, 94.2, 92.7, 86.3, 93.4, 92.2, 86.7, 79.5, 92.1, 88.2, 81.2, 94.5), 1034.8),
        ("CMKD+RST", (78.9, 93.8, 92.7, 85.3, 93.0, 91.7, 85.3, 78.4, 92.0, 87.2, 80.3, 94.1),
         1.02),
        ("CMKD+FixMatch", (80.9, 94.6, 92.7, 87.1, 93.7, 92.5, 87.8, 80.2, 92.3, 89.2, 82.1,
                           94.6), 1034.8),
    ],
}

# The paper's Fig. 4 (docs/method.md#the-papers-reported-results): Office-Home means over 12
# tasks; DSP in millions.
OFFICE_HOME_SWEEP: dict[str, list[tuple[str, float, float]]] = {
    "RN50": [("full FT", 79.3, 460.4), ("tau 1e-7", 79.3, 14.0), ("tau 1e-6", 78.8, 1.23),
             ("tau 1e-5", 77.4, 0.80), ("linear probe", 76.9, 0.80)],
    "ViT-B/16": [("full FT", 88.4, 1030.2), ("tau 1e-7", 88.4, 182.2), ("tau 1e-6", 87.7, 1.02),
                 ("tau 1e-5", 86.8, 0.43), ("linear probe", 86.5, 0.40)],
}

# The paper's benchmark means (docs/method.md#the-papers-reported-results):
# (tasks in the paper's sum, {backbone: [(label, acc, DSP M)]}).
# DomainNet's zero-shot figure (6.6) is a known artefact of the reference code
# (docs/method.md#d1-domainnet-class-order).
BENCHMARK_MEANS: dict[str, tuple[int, dict[str, list[tuple[str, float, float]]]]] = {
    "office31": (6, {"RN50": [("CLIP zero-shot", 71.6, 0.0), ("CMKD+RST", 90.8, 0.31)],
                     "ViT-B/16": [("CLIP zero-shot", 78.6, 0.0), ("CMKD+RST", 93.2, 0.29)]}),
    "digits": (3, {"RN50": [("CLIP zero-shot", 54.8, 0.0), ("CMKD+RST", 96.1, 0.23)],
                   "ViT-B/16": [("CLIP zero-shot", 58.0, 0.0), ("CMKD+RST", 96.7, 0.72)]}),
    "image_clef": (6, {"RN50": [("CLIP zero-shot", 90.9, 0.0), ("CMKD+RST", 92.2, 0.21)],
                       "ViT-B/16": [("CLIP zero-shot", 90.1, 0.0), ("CMKD+RST", 93.9, 0.08)]}),
    "visda": (1, {"RN101": [("CLIP zero-shot", 84.4, 0.0), ("CMKD+RST", 86.6, 0.03)],
                  "ViT-B/16": [("CLIP zero-shot", 88.0, 0.0), ("CMKD+RST", 89.1, 0.06)]}),
    "domainnet": (30, {"ViT-B/16": [("CMKD", 53.9, 2591.3), ("CMKD+RST", 52.2, 15.71)]}),
}

_BACKBONES = {"RN50": "RN50", "RN101": "RN101", "ViT-B-16": "ViT-B/16", "ViT-B/16": "ViT-B/16"}


def backbone_of(model: str) -> str | None:
    """The paper's name for an open_clip model name, or None for models the paper did not use."""
    return _BACKBONES.get(model)


def office_home_task(src: str, tgt: str) -> int | None:
    """The column of Table I for a transfer task, or None when it is not an Office-Home task."""
    key = f"{OFFICE_HOME_DOMAINS.get(src, '?')}-{OFFICE_HOME_DOMAINS.get(tgt, '?')}"
    return OFFICE_HOME_TASKS.index(key) if key in OFFICE_HOME_TASKS else None


def _office_home(backbone: str, tasks: Sequence[tuple[str, str]]) -> list[ReferencePoint]:
    columns = [office_home_task(src, tgt) for src, tgt in tasks]
    n = len(tasks)
    points = []
    if all(c is not None for c in columns):
        where = "paper" if n == 1 else f"paper, mean of these {n} tasks"
        for label, accuracies, dsp in OFFICE_HOME_TABLE[backbone]:
            accuracy = sum(accuracies[c] for c in columns) / n
            points.append(ReferencePoint(f"{label} ({where})", accuracy, dsp * MILLION / 12 * n))
    for label, accuracy, dsp in OFFICE_HOME_SWEEP[backbone]:
        points.append(ReferencePoint(f"Fig. 4 {label}", accuracy, dsp * MILLION / 12 * n,
                                     series="paper Fig. 4 threshold sweep (12-task mean)"))
    return points


def paper_references(benchmark: str, model: str, tasks: Sequence[tuple[str, str]]
                     ) -> list[ReferencePoint]:
    """The paper's results for this benchmark and backbone, in the search's objectives.

    Args:
        benchmark: the config's benchmark name (office_home, office31, visda, ...).
        model: the open_clip model name (RN50, ViT-B-16, ...).
        tasks: the search's (source, target) domain pairs.

    Returns:
        The reference points; empty when the paper has none for this benchmark and backbone.
    """
    backbone = backbone_of(model)
    if backbone is None or not tasks:
        return []
    if benchmark == "office_home":
        return _office_home(backbone, tasks) if backbone in OFFICE_HOME_TABLE else []
    if benchmark not in BENCHMARK_MEANS:
        return []
    paper_tasks, rows = BENCHMARK_MEANS[benchmark]
    n = len(tasks)
    return [ReferencePoint(f"{label} (paper, {paper_tasks}-task mean)", accuracy,
                           dsp * MILLION / paper_tasks * n)
            for label, accuracy, dsp in rows.get(backbone, [])]
