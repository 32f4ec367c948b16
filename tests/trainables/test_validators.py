"""Label-free validators against hand-computed values, and where collapse lands on each."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlpuda.trainables import validators as v

BIG = 60.0  # logits this far apart give softmax outputs one-hot to ~1e-26


def logits_of(probs) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log()


def test_entropy_and_im_on_uniform_and_confident_rows():
    uniform = logits_of([[0.5, 0.5], [0.5, 0.5]])
    assert v.neg_entropy(uniform) == pytest.approx(-math.log(2))
    assert v.information_maximization(uniform) == pytest.approx(0.0, abs=1e-12)
    balanced = torch.tensor([[BIG, 0.0], [0.0, BIG]])
    assert v.neg_entropy(balanced) == pytest.approx(0.0, abs=1e-12)
    assert v.information_maximization(balanced) == pytest.approx(math.log(2))
    # p = (0.8, 0.2) and (0.2, 0.8): mean H = H(0.8); marginal (0.5, 0.5).
    h = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    mixed = logits_of([[0.8, 0.2], [0.2, 0.8]])
    assert v.information_maximization(mixed) == pytest.approx(math.log(2) - h)


def test_collapse_scores_best_for_entropy_worst_for_im():
    collapsed = torch.tensor([[BIG, 0.0], [BIG, 0.0]])
    balanced = torch.tensor([[BIG, 0.0], [0.0, BIG]])
    # Entropy cannot tell collapse from a good model
    # (docs/validators.md#2-entropy-and-information-maximisation) ...
    assert v.neg_entropy(collapsed) == pytest.approx(v.neg_entropy(balanced))
    # ... IM's diversity term scores it worst: 0, its minimum for confident rows.
    assert v.information_maximization(collapsed) == pytest.approx(0.0, abs=1e-12)


def test_bnm_on_a_2x2_matrix():
    # ||A||_* of a 2x2 matrix = sqrt(||A||_F^2 + 2|det A|): 1.5 and 0.7 here.
    probs = logits_of([[0.9, 0.1], [0.2, 0.8]])
    assert v.batch_nuclear_norm(probs) == pytest.approx(math.sqrt(1.5 + 1.4) / 2)
    # Identity: sqrt(C/N) = 1, the maximum; collapse onto one class: ||(1,1)|| / N = 1/sqrt(2);
    # uniform: 1/sqrt(NC) = 1/2, the minimum.
    assert v.batch_nuclear_norm(torch.tensor([[BIG, 0.0], [0.0, BIG]])) == pytest.approx(1.0)
    collapsed = torch.tensor([[BIG, 0.0], [BIG, 0.0]])
    assert v.batch_nuclear_norm(collapsed) == pytest.approx(1 / math.sqrt(2))
    assert v.batch_nuclear_norm(logits_of([[0.5, 0.5]] * 2)) == pytest.approx(0.5)


def test_snd_on_three_points():
    # Rows 1 and 2 point the same way, row 3 orthogonally. Row 1's neighbour softmax puts all
    # mass on row 2 (entropy ~0), as does row 2's on row 1; row 3 sees rows 1 and 2 at cosine 0
    # and itself at -1/T: half and half, entropy log 2. SND = log(2) / 3.
    three = torch.tensor([[BIG, 0.0], [BIG, 0.0], [0.0, BIG]])
    # log(P + 1e-5) instead of log P: row 3's entropy is log 2 - log(1 + 2e-5), rows 1 and 2
    # each -log(1 + 1e-5) (plus ~2e-8 from the e^-20 cosine-0 neighbour).
    expected = (math.log(2) - math.log(1 + 2e-5) - 2 * math.log(1 + 1e-5)) / 3
    assert v.soft_neighborhood_density(three) == pytest.approx(expected, rel=1e-6)


def test_snd_collapse_is_its_maximum_and_blocks_do_not_change_it():
    collapsed = torch.tensor([[BIG, 0.0]] * 3)
    assert v.soft_neighborhood_density(collapsed) == pytest.approx(math.log(2), rel=1e-4)
    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 4, generator=rng) * 3
    whole = v.soft_neighborhood_density(logits, block=1024)
    assert v.soft_neighborhood_density(logits, block=7) == pytest.approx(whole, rel=1e-12)
    # Collapse scores above any real spread of predictions
    # (docs/validators.md#3-snd-soft-neighbourhood-density).
    assert v.soft_neighborhood_density(torch.tensor([[BIG, 0.0]] * 50)) > whole


def test_agreement_and_accuracy_in_percent():
    a, b = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 0])
    assert v.agreement(a, b) == 50.0
    assert v.accuracy(a, a) == 100.0


def test_fixed_subsample_is_fixed_and_complete_when_small():
    assert np.array_equal(v.fixed_subsample(5, 10), np.arange(5))
    first, again = v.fixed_subsample(1000, 100, seed=3), v.fixed_subsample(1000, 100, seed=3)
    assert np.array_equal(first, again) and len(set(first)) == 100
    assert np.all(np.diff(first) > 0)


def test_mixval_pairs_keep_the_right_label_relations():
    pseudo = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pairs = v.mixval_pairs(pseudo, np.arange(8), batch=4)
    a, b = pairs["intra"]
    # Sorted by label, batches [0..3] and [4..7], each paired i <-> 3 - i: all 8 share a label.
    assert sorted(zip(a.tolist(), b.tolist())) == sorted(
        [(0, 3), (1, 2), (2, 1), (3, 0), (4, 7), (5, 6), (6, 5), (7, 4)])
    a, b = pairs["inter"]
    assert np.all(pseudo[a] != pseudo[b]) and np.all(a != b)
    # Probed in both directions.
    assert sorted(zip(a.tolist(), b.tolist())) == sorted(zip(b.tolist(), a.tolist()))


def test_mixval_ice_with_a_toy_threshold_model():
    # The "model" says class 1 when the pixel exceeds a threshold. Mixing 0.55 * a + 0.45 * b:
    # (1, 0) -> 0.55, (0, 1) -> 0.45.
    a = torch.tensor([[1.0], [0.0]])
    b = torch.tensor([[0.0], [1.0]])
    pseudo_a = torch.tensor([1, 0])
    at_half = v.mixval_ice(lambda x: (x[:, 0] > 0.5).long(), a, b, pseudo_a)
    assert at_half == 1.0  # a boundary at the midpoint keeps the dominant image's label
    shifted = v.mixval_ice(lambda x: (x[:, 0] > 0.6).long(), a, b, pseudo_a)
    assert shifted == 0.5  # 0.55 falls on the wrong side: one of the two probes fails
    assert math.isnan(v.mixval_ice(lambda x: x[:, 0].long(), a[:0], b[:0], pseudo_a[:0]))
    assert v.mean_ice(1.0, 0.5) == 0.75
    assert v.mean_ice(float("nan"), 0.5) == 0.5  # collapse leaves no inter pair: intra alone
