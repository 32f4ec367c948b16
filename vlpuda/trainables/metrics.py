"""Per-class accuracy: the counts an evaluation pass sums, and the mean of per-class accuracies.

VisDA-2017 is scored by the mean of per-class accuracies (the reference uses sklearn's
balanced accuracy, docs/method.md#d8-visda-metric), which weighs a rare class as much as a
frequent one.
The mean runs over the classes the target actually holds: in partial-set adaptation the heads
score every source class, but only the target's classes have images to be right about.
"""

from __future__ import annotations

import torch


def per_class_counts(pred: torch.Tensor, labels: torch.Tensor, num_classes: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct per true class, images per true class) as float64 vectors of num_classes."""
    hits = (pred == labels).double()
    correct = torch.zeros(num_classes, dtype=torch.float64, device=labels.device)
    count = torch.zeros(num_classes, dtype=torch.float64, device=labels.device)
    correct.index_add_(0, labels, hits)
    count.index_add_(0, labels, torch.ones_like(hits))
    return correct, count


def class_mean_accuracy(correct: torch.Tensor, count: torch.Tensor) -> float:
    """Mean over the classes with images of correct / count, in percent."""
    present = count > 0
    if not bool(present.any()):
        raise ValueError("no class has any image: the class-mean accuracy is undefined")
    return 100.0 * float((correct[present] / count[present]).mean())
