"""Every loss term against values computed by hand on small fixed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from vlpuda.trainables.losses import (
    LossWeights,
    agreement_weight,
    batch_gini,
    cmkd_terms,
    fixmatch_term,
    partial_set_loss,
    ramp,
)
from vlpuda.trainables.partial import label_set


def logits_of(*rows: list[float]) -> torch.Tensor:
    """Logits whose softmax is exactly the given probability rows."""
    return torch.tensor(rows, dtype=torch.float64).log()


def test_ramp_matches_paper_schedule():
    assert ramp(0, 10_000) == 0.0
    assert ramp(10_000, 10_000) == pytest.approx(2 / (1 + math.exp(-1)) - 1)  # 0.4621
    assert ramp(10_000, 10_000) == pytest.approx(0.46211716, abs=1e-8)
    assert ramp(25_000, 10_000) == ramp(10_000, 10_000)  # flat after the horizon
    assert ramp(150, 150, gamma=5.0) == pytest.approx(0.98661429, abs=1e-8)
    assert ramp(5_000, 10_000) == pytest.approx(2 / (1 + math.exp(-0.5)) - 1)


def test_batch_gini_is_class_mass_normalised_and_summed():
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    # S = (1.5, 0.5); row 0: 1 - (0.25/1.5 + 0.25/0.5) = 1/3; row 1: 1 - 1/1.5 = 1/3
    assert batch_gini(probs).item() == pytest.approx(2 / 3)
    weights = torch.tensor([2.0, 0.5], dtype=torch.float64)
    assert batch_gini(probs, weights).item() == pytest.approx(2 / 3 + 1 / 6)


def test_batch_gini_gradient_treats_class_mass_as_constant():
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], dtype=torch.float64,
                         requires_grad=True)
    weights = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    batch_gini(probs, weights).backward()
    mass = probs.detach().sum(0)
    expected = -2 * weights[:, None] * probs.detach() / mass  # d/dP of -w P^2 / sg(S)
    torch.testing.assert_close(probs.grad, expected)


def test_agreement_weight_uses_kl_from_clip_head_to_task_head():
    task = logits_of([0.5, 0.5])
    clip = logits_of([0.9, 0.1])
    kl_g_h = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # 0.368064
    kl_h_g = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # the paper's direction
    alpha = agreement_weight(task, clip).item()
    assert alpha == pytest.approx(math.exp(-kl_g_h), rel=1e-6)
    assert abs(alpha - math.exp(-kl_h_g)) > 0.05
    assert agreement_weight(clip, clip).item() == pytest.approx(1.0)


def test_agreement_weight_is_finite_when_task_head_underflows():
    task = torch.tensor([[200.0, -200.0]])
    clip = torch.tensor([[-200.0, 200.0]])
    alpha = agreement_weight(task, clip)
    assert torch.isfinite(alpha).all() and alpha.item() == pytest.approx(0.0, abs=1e-30)


def cmkd_example(requires_grad: bool = False):
    src_task = torch.zeros(2, 2, dtype=torch.float64, requires_grad=requires_grad)
    src_clip = logits_of([0.9, 0.1], [0.9, 0.1]).requires_grad_(requires_grad)
    labels = torch.tensor([0, 0])
    tgt_task = logits_of([0.5, 0.5], [0.5, 0.5]).requires_grad_(requires_grad)
    tgt_clip = logits_of([0.9, 0.1], [0.1, 0.9]).requires_grad_(requires_grad)
    return src_task, src_clip, labels, tgt_task, tgt_clip


def test_cmkd_terms_against_hand_computation():
    weights = LossWeights(lambda1=0.25, lambda2=0.1, lambda3=0.025, label_smoothing=0.1)
    terms = cmkd_terms(*cmkd_example(), ramp_weight=0.5, weights=weights)
    alpha = math.exp(-(0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)))
    # task: p_h rows (.5,.5), S = (1,1), Gini 0.5 each, weights alpha
    assert terms["task"].item() == pytest.approx(0.25 * 0.5 * 2 * alpha * 0.5)
    # distill: mixed rows (.7,.3), (.3,.7), S = (1,1), Gini 1 - .49 - .09 = .42, weights 1-alpha
    assert terms["distill"].item() == pytest.approx(0.25 * 0.5 * 2 * (1 - alpha) * 0.42)
    # reg_gini: p_g rows (.9,.1), (.1,.9), Gini .18 each, not weighted by alpha
    assert terms["reg_gini"].item() == pytest.approx(0.025 * 0.5 * 2 * 0.18)
    # reg_ce: plain CE of the CLIP head, no smoothing, no ramp
    assert terms["reg_ce"].item() == pytest.approx(0.1 * -math.log(0.9))
    # cls: uniform logits give ln 2 with or without smoothing
    assert terms["cls"].item() == pytest.approx(math.log(2))


def test_cmkd_gradient_flow():
    weights = LossWeights()
    inputs = cmkd_example(requires_grad=True)
    terms = cmkd_terms(*inputs, ramp_weight=0.5, weights=weights)
    _, _, _, tgt_task, tgt_clip = inputs
    # p_g is detached inside the mixture and alpha is detached, so the task and distillation
    # terms send no gradient into the CLIP head
    grads = torch.autograd.grad(terms["distill"] + terms["task"], [tgt_task, tgt_clip],
                                allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert grads[1] is None or grads[1].abs().sum() == 0
    # the regulariser trains the encoder through the CLIP head
    (grad_clip,) = torch.autograd.grad(terms["reg_gini"], [tgt_clip])
    assert grad_clip.abs().sum() > 0


def test_transfer_terms_vanish_at_ramp_zero():
    terms = cmkd_terms(*cmkd_example(), ramp_weight=0.0, weights=LossWeights())
    assert terms["task"].item() == 0 and terms["distill"].item() == 0
    assert terms["reg_gini"].item() == 0 and terms["reg_ce"].item() > 0


def test_fixmatch_masks_unconfident_samples_but_counts_them():
    weak = logits_of([0.99, 0.01], [0.6, 0.4], [0.02, 0.98])
    strong = logits_of([0.7, 0.3], [0.5, 0.5], [0.2, 0.8])
    value = fixmatch_term(weak, strong, threshold=0.95).item()
    # samples 0 and 2 pass; pseudo-labels 0 and 1; mean over all three samples
    assert value == pytest.approx((-math.log(0.7) - math.log(0.8)) / 3)
    assert fixmatch_term(weak, strong, threshold=0.999).item() == 0.0


# ---- partial-set adaptation (pda): the label set, restricted terms, the reference's weights ----


def test_label_set_keeps_classes_predicted_often_enough():
    predictions = torch.tensor([0, 2, 2, 2, 3, 3, 0, 2])
    assert label_set(predictions, 4, min_hits=2).tolist() == [0, 2, 3]
    assert label_set(predictions, 4, min_hits=3).tolist() == [2]
    assert label_set(predictions, 4, min_hits=5) is None  # no class: every class counts


def test_batch_gini_over_a_label_set_is_not_renormalised():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64)
    columns = torch.tensor([0, 2])
    # S over the kept columns = (0.6, 1.0); row 0: 1 - (0.25/0.6 + 0.04/1.0);
    # row 1: 1 - (0.01/0.6 + 0.64/1.0); the 0.3 and 0.1 mass outside S is simply dropped
    expected = (1 - (0.25 / 0.6 + 0.04)) + (1 - (0.01 / 0.6 + 0.64))
    assert batch_gini(probs, 1.0, columns).item() == pytest.approx(expected)
    weights = torch.tensor([2.0, 0.5], dtype=torch.float64)
    assert batch_gini(probs, weights, columns).item() == pytest.approx(
        2 * (1 - (0.25 / 0.6 + 0.04)) + 0.5 * (1 - (0.01 / 0.6 + 0.64)))


def test_cmkd_terms_restrict_every_gini_term_to_the_label_set():
    example, weights = cmkd_example(), LossWeights()
    columns = torch.tensor([1])
    full = cmkd_terms(*example, ramp_weight=0.4, weights=weights)
    kept = cmkd_terms(*example, ramp_weight=0.4, weights=weights, columns=columns)
    assert kept["cls"] == full["cls"] and kept["reg_ce"] == full["reg_ce"]  # source: untouched
    _, _, _, tgt_task, tgt_clip = example
    p_h, p_g = tgt_task.float().softmax(1), tgt_clip.float().softmax(1)  # as cmkd_terms computes
    alpha = agreement_weight(tgt_task, tgt_clip)
    scale = weights.lambda1 * 0.4
    torch.testing.assert_close(kept["task"], scale * batch_gini(p_h[:, 1:], alpha))
    torch.testing.assert_close(kept["distill"],
                               scale * batch_gini(0.5 * (p_h + p_g)[:, 1:], 1 - alpha))
    torch.testing.assert_close(kept["reg_gini"], weights.lambda3 * 0.4 * batch_gini(p_g[:, 1:]))


def test_fixmatch_pseudo_labels_ignore_classes_outside_the_label_set():
    weak = logits_of([0.96, 0.04, 0.0 + 1e-12], [0.1, 0.5, 0.4])
    strong = logits_of([0.2, 0.7, 0.1], [0.3, 0.3, 0.4])
    columns = torch.tensor([1, 2])
    # Row 0: zeroing class 0 leaves q max 0.04: masked. Row 1: q = (0, 0.5, 0.4), label 1 with
    # confidence 0.5, not renormalised over the set (0.56): a 0.52 threshold masks it.
    value = fixmatch_term(weak, strong, threshold=0.45, columns=columns).item()
    assert value == pytest.approx(-math.log(0.3) / 2)
    assert fixmatch_term(weak, strong, threshold=0.52, columns=columns).item() == 0.0
    assert fixmatch_term(weak, strong, threshold=0.95).item() == pytest.approx(-math.log(0.2) / 2)


def test_partial_set_loss_weighs_source_half_and_transfer_a_tenth():
    terms = {"cls": torch.tensor(2.0), "task": torch.tensor(1.0), "distill": torch.tensor(3.0),
             "reg_ce": torch.tensor(0.5), "reg_gini": torch.tensor(0.25)}
    assert partial_set_loss(terms).item() == pytest.approx(0.5 * 2 + 0.1 * 4.75)
    assert partial_set_loss(terms, torch.tensor(1.25)).item() == pytest.approx(0.5 * 2 + 0.1 * 6)
