"""The sparsity ladder's cut: the largest |w - w0| entries kept, nested, reported and parsed."""

from __future__ import annotations

import torch

from vlpuda.trainables.ladder import keep_counts, ladder_metrics, parse_ladder, truncate_largest


def test_keep_counts_halve_the_changed_weights():
    assert keep_counts(100, 3) == [50, 25, 12]
    assert keep_counts(1, 2) == [0, 0]
    assert keep_counts(7, 0) == []


def test_truncation_keeps_exactly_the_largest_changes():
    w0 = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    w = torch.tensor([1.5, 2.0, 2.9, 4.0, 8.0, 5.0])  # changes 0.5, 0, -0.1, 0, 3, -1
    cut = truncate_largest(w, w0, 2)
    assert cut.tolist() == [1.0, 2.0, 3.0, 4.0, 8.0, 5.0]  # |3| and |-1| kept, the rest w0
    nested = truncate_largest(cut, w0, 1)
    assert nested.tolist() == [1.0, 2.0, 3.0, 4.0, 8.0, 6.0]
    assert truncate_largest(w, w0, 0).equal(w0)
    assert truncate_largest(w, w0, 4).equal(w)  # every changed entry
    # Bit-exact: kept entries are the trained values, not w0 + (w - w0).
    assert cut[4].item() == w[4].item() and w[5].item() == 5.0


def test_ladder_metrics_round_trip():
    points = [{"fraction": 0.5, "target_acc": 80.0, "stored_params": 120},
              {"fraction": 0.25, "target_acc": 75.5, "stored_params": 70}]
    flat = ladder_metrics(points)
    assert flat["ladder_2/target_acc"] == 80.0 and flat["ladder_4/stored_params"] == 70
    assert parse_ladder({**flat, "target_acc": 90.0, "epoch": 3}) == points
