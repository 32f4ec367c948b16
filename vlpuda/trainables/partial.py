"""Matching the target's classes to the source's: closed-set (identical lists) or partial-set.

Partial-set domain adaptation (`pda: true`, the reference's Office-Home 65 -> 25 setting): the
target holds a subset of the source's classes. Both heads keep scoring every source class, as in
the reference, so a target image can be mistaken for a class the target does not have; the
target's labels are re-indexed by class name into the source's label space, and the accuracies
run over the target's images (the class mean over the classes it holds, metrics.py).
"""

from __future__ import annotations

import numpy as np
import torch

from vlpuda.errors import DataError
from vlpuda.trainables.decoded import DecodedDomain, decoded_from_arrays
from vlpuda.trainables.lists import check_same_classes


def check_partial_classes(src_name: str, src_classes: list[str], tgt_name: str,
                          tgt_classes: list[str]) -> None:
    """Fail unless every target class is a source class (names compared exactly)."""
    extra = sorted(set(tgt_classes) - set(src_classes))
    if extra:
        raise DataError(
            f"pda: target {tgt_name!r} has classes the source {src_name!r} does not: {extra}; "
            "in partial-set adaptation the target's classes must be a subset of the source's "
            "(same folder names), so remove those folders or fix their names"
        )
    if len(set(tgt_classes)) != len(tgt_classes):
        raise DataError(f"pda: target {tgt_name!r} lists a class twice; class names must be "
                        "unique")


def to_source_labels(target: DecodedDomain, src_classes: list[str]) -> DecodedDomain:
    """The target with its labels re-indexed into the source's class list (by name)."""
    index = {name: i for i, name in enumerate(src_classes)}
    mapping = np.array([index[name] for name in target.classes], dtype=np.int64)
    labels = mapping[target.labels] if len(target) else target.labels
    return decoded_from_arrays(target.name, src_classes, labels, target.train_images,
                               target.test_images)


def align_target(pda: bool, src_name: str, src_classes: list[str],
                 target: DecodedDomain) -> DecodedDomain:
    """The target in the source's label space: checked identical (closed set), or checked to be
    a subset and re-indexed (pda)."""
    if not pda:
        check_same_classes(src_name, src_classes, target.name, target.classes)
        return target
    check_partial_classes(src_name, src_classes, target.name, target.classes)
    return to_source_labels(target, list(src_classes))


def label_set(predictions: torch.Tensor, num_classes: int, min_hits: int) -> torch.Tensor | None:
    """The classes the task head predicts at least `min_hits` times on the target: the only
    columns the Gini terms see in the next epoch (the reference's label set, recomputed each
    epoch from the second on). None (all classes) when no class gets there, which only a target
    smaller than `min_hits` images per class can cause: the reference would then train on a
    constant."""
    hits = torch.bincount(predictions.flatten().long(), minlength=num_classes)
    kept = torch.nonzero(hits >= min_hits).flatten()
    return kept if len(kept) else None
