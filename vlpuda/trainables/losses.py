"""CMKD and FixMatch loss terms as pure functions (docs/method.md#losses).

Notation: p_h = softmax of the task head, p_g = softmax of the zero-shot CLIP head (the student's
own encoder against frozen text prototypes), r = the ramp weight. Every function takes logits or
probabilities and returns a scalar tensor, so each term can be checked against a hand computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def ramp(iteration: int, horizon: int, gamma: float = 1.0) -> float:
    """Sigmoid ramp r(t) = 2 / (1 + exp(-gamma * min(t, H) / H)) - 1.

    With the paper's gamma = 1 and H = 10,000 it rises from 0 to 0.4621 and then stays there
    (docs/method.md#ramp); short runs set H to their own length and may raise gamma.
    """
    progress = min(iteration, horizon) / horizon
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def batch_gini(probs: torch.Tensor, weights: torch.Tensor | float = 1.0,
               columns: torch.Tensor | None = None) -> torch.Tensor:
    """Class-mass-normalised Gini impurity, summed (not averaged) over the batch.

    BGI(P; w) = sum_i w_i * (1 - sum_c P_ic^2 / S_c) with S_c = sg(sum_j P_jc). Dividing by the
    detached batch mass of each class penalises piling many samples onto one class; the sum over
    the batch makes the term grow with the batch size, as in the reference code
    (docs/method.md#batch-gini-impurity-bgi).
    `columns`: only these classes count (partial-set adaptation's label set); the probabilities
    are not renormalised over them, as in the reference.
    """
    if columns is not None:
        probs = probs[:, columns]
    class_mass = probs.sum(dim=0).detach().clamp_min(1e-12)
    per_sample = 1.0 - (probs.pow(2) / class_mass).sum(dim=1)
    return (weights * per_sample).sum()


def agreement_weight(task_logits: torch.Tensor, clip_logits: torch.Tensor) -> torch.Tensor:
    """alpha_i = exp(-KL(p_g,i || p_h,i)), detached (docs/method.md#agreement-weight-alpha).

    The KL runs from the CLIP head to the task head, as the reference code computes it (the paper
    prints the other direction). log_softmax keeps it finite when p_h underflows.
    """
    log_p_h = F.log_softmax(task_logits.detach().float(), dim=1)
    log_p_g = F.log_softmax(clip_logits.detach().float(), dim=1)
    kl = (log_p_g.exp() * (log_p_g - log_p_h)).sum(dim=1)
    return torch.exp(-kl)


@dataclass(frozen=True)
class LossWeights:
    """The loss weights of one run: lambda1 (task and distillation), lambda2 (CE on the CLIP head,
    source), lambda3 (Gini on the CLIP head, target), label smoothing of the source CE."""

    lambda1: float = 0.25
    lambda2: float = 0.1
    lambda3: float = 0.025
    label_smoothing: float = 0.1


def cmkd_terms(
    src_task: torch.Tensor,
    src_clip: torch.Tensor,
    src_labels: torch.Tensor,
    tgt_task: torch.Tensor,
    tgt_clip: torch.Tensor,
    ramp_weight: float,
    weights: LossWeights,
    columns: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every CMKD term of one iteration; their sum is the loss.

    Terms and weights: docs/method.md#cmkd-terms-and-lambda-weights.

    - cls: smoothed CE of the task head on the source.
    - task: lambda1 * r * BGI(p_h; alpha), self-training of the task head on the target.
    - distill: lambda1 * r * BGI((p_h + sg p_g) / 2; 1 - alpha); gradients only through p_h.
    - reg_ce: lambda2 * CE(g, source), not ramped, no smoothing: keeps the CLIP head meaningful.
    - reg_gini: lambda3 * r * BGI(p_g on target; 1), trains the encoder through the CLIP head.
    `columns`: the classes every BGI term sees (partial-set adaptation; None: all).
    """
    p_h = F.softmax(tgt_task.float(), dim=1)
    p_g = F.softmax(tgt_clip.float(), dim=1)
    alpha = agreement_weight(tgt_task, tgt_clip)
    mixed = 0.5 * (p_h + p_g.detach())
    scale = weights.lambda1 * ramp_weight
    return {
        "cls": F.cross_entropy(
            src_task.float(), src_labels, label_smoothing=weights.label_smoothing
        ),
        "task": scale * batch_gini(p_h, alpha, columns),
        "distill": scale * batch_gini(mixed, 1.0 - alpha, columns),
        "reg_ce": weights.lambda2 * F.cross_entropy(src_clip.float(), src_labels),
        "reg_gini": weights.lambda3 * ramp_weight * batch_gini(p_g, 1.0, columns),
    }


def fixmatch_term(
    weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float,
    columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """mean_i 1[max q_i >= threshold] * CE(strong_i, argmax q_i), q = softmax(weak), detached.

    The mean runs over the whole batch: masked samples count in the denominator
    (docs/method.md#fixmatch-terms).
    `columns` (partial-set adaptation): q is zeroed outside these classes, not renormalised.
    """
    with torch.no_grad():
        q = F.softmax(weak_logits.float(), dim=1)
        if columns is not None:
            keep = torch.zeros(q.shape[1], dtype=q.dtype, device=q.device)
            q = q * keep.index_fill_(0, columns, 1.0)
        confidence, pseudo_labels = q.max(dim=1)
        mask = (confidence >= threshold).float()
    per_sample = F.cross_entropy(strong_logits.float(), pseudo_labels, reduction="none")
    return (mask * per_sample).mean()


# Partial-set adaptation (the reference's `--pda`): the source CE counts half and everything
# else ("transfer": the CMKD target terms, the CLIP-head regulariser and FixMatch) a tenth.
PDA_CLS_WEIGHT, PDA_TRANSFER_WEIGHT = 0.5, 0.1


def partial_set_loss(terms: dict[str, torch.Tensor], fixmatch: torch.Tensor | float = 0.0
                     ) -> torch.Tensor:
    """0.5 * L_cls + 0.1 * (every other term): the reference's loss under `--pda`."""
    transfer = sum(value for name, value in terms.items() if name != "cls") + fixmatch
    return PDA_CLS_WEIGHT * terms["cls"] + PDA_TRANSFER_WEIGHT * transfer
