"""Label-free validators: scores of a checkpoint on the unlabelled target, higher is better.

Small pure functions on task-head logits (N x C), hard predictions or a model; every definition,
its source and its known failure modes are in docs/validators.md (sections cited below).
Entropies come from log_softmax, so confident logits never produce log(0).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

# SND's temperature and the epsilon inside its neighbour entropy
# (docs/validators.md#3-snd-soft-neighbourhood-density).
SND_TEMPERATURE = 0.05
SND_EPS = 1e-5
SND_BLOCK = 1024
# MixVal's mixing weight of the dominant image (docs/validators.md#5-mixval).
MIXVAL_LAMBDA = 0.55


def _entropy_rows(logits: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits.double(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def neg_entropy(logits: torch.Tensor) -> float:
    """proxy_entropy = -(1/N) sum_i H(softmax(z_i))
    (docs/validators.md#2-entropy-and-information-maximisation)."""
    return -float(_entropy_rows(logits).mean())


def information_maximization(logits: torch.Tensor) -> float:
    """proxy_im = H(mean_i p_i) - (1/N) sum_i H(p_i)
    (docs/validators.md#2-entropy-and-information-maximisation)."""
    p_mean = torch.softmax(logits.double(), dim=1).mean(dim=0)
    marginal = -(p_mean * p_mean.clamp_min(1e-300).log()).sum()
    return float(marginal - _entropy_rows(logits).mean())


def batch_nuclear_norm(logits: torch.Tensor) -> float:
    """proxy_bnm = ||softmax(Z)||_* / N, the sum of singular values over N
    (docs/validators.md#4-bnm-batch-nuclear-norm). Depends on N: compare only on one fixed
    sample."""
    probs = torch.softmax(logits.double(), dim=1)
    if not bool(torch.isfinite(probs).all()):  # a diverged model: NaN, never a kept epoch
        return float("nan")
    return float(torch.linalg.svdvals(probs).sum() / probs.shape[0])


def soft_neighborhood_density(logits: torch.Tensor, temperature: float = SND_TEMPERATURE,
                              block: int = SND_BLOCK) -> float:
    """proxy_snd: mean entropy of each row's softmax over its cosine similarities (of softmax
    outputs) to every other row, divided by T, self masked to -1/T
    (docs/validators.md#3-snd-soft-neighbourhood-density).

    Row i's entropy depends only on row i of the similarity matrix, so rows are processed in
    blocks of `block` against all N columns: memory O(block * N), the result unchanged."""
    probs = torch.softmax(logits.double(), dim=1)
    unit = probs / probs.norm(dim=1, keepdim=True)
    n, total = unit.shape[0], 0.0
    for start in range(0, n, block):
        sim = unit[start:start + block] @ unit.T / temperature
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = -1.0 / temperature  # the smallest cosine, as the original
        neighbours = torch.softmax(sim, dim=1)
        total += float(-(neighbours * (neighbours + SND_EPS).log()).sum())
    return total / n


def agreement(pred: torch.Tensor, reference: torch.Tensor) -> float:
    """% of images where two hard predictions agree: proxy_zs_agreement compares the task head
    with the frozen zero-shot predictions
    (docs/validators.md#6-agreement-with-the-frozen-zero-shot-head)."""
    return 100.0 * float((pred == reference).double().mean())


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """% correct: proxy_source_acc on the held-out source slice
    (docs/validators.md#7-source-accuracy-on-a-held-out-slice)."""
    return 100.0 * float((pred == labels).double().mean())


def fixed_subsample(n: int, size: int, seed: int = 0) -> np.ndarray:
    """`size` sorted indices of range(n) drawn with `seed` (all of them when n <= size): the one
    sample every epoch and trial of a search scores N-dependent validators on."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def _reversed_batch_pairs(order: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair image i of each batch of `order` with image B-1-i (MixVal's pairing)."""
    firsts, seconds = [], []
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        firsts.append(chunk)
        seconds.append(chunk[::-1])
    if not firsts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def mixval_pairs(pseudo: np.ndarray, subset: np.ndarray, batch: int, seed: int = 0
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MixVal's probe pairs (a, b) over `subset` (docs/validators.md#5-mixval): 'inter' pairs
    from a seeded shuffle, kept where the pseudo-labels differ; 'intra' pairs from the subset
    sorted by pseudo-label (stable), kept where they agree. Self pairs are dropped."""
    shuffled = np.random.default_rng(seed).permutation(subset)
    by_label = subset[np.argsort(pseudo[subset], kind="stable")]
    pairs = {}
    for kind, order, keep_same in (("inter", shuffled, False), ("intra", by_label, True)):
        a, b = _reversed_batch_pairs(order, batch)
        keep = ((pseudo[a] == pseudo[b]) == keep_same) & (a != b)
        pairs[kind] = (a[keep], b[keep])
    return pairs


def mixval_ice(predict: Callable[[torch.Tensor], torch.Tensor], images_a: torch.Tensor,
               images_b: torch.Tensor, pseudo_a: torch.Tensor, lam: float = MIXVAL_LAMBDA
               ) -> float:
    """ICE: the fraction of mixes lam * x_a + (1 - lam) * x_b that `predict` (images -> hard
    labels) gives a's pseudo-label (docs/validators.md#5-mixval). NaN without pairs."""
    if len(pseudo_a) == 0:
        return float("nan")
    mixed = lam * images_a + (1.0 - lam) * images_b
    return float((predict(mixed) == pseudo_a).double().mean())


def mean_ice(intra: float, inter: float) -> float:
    """proxy_mixval: the mean of the two ICE values, ignoring a missing one (skada's rule;
    docs/validators.md#5-mixval names this choice)."""
    values = [v for v in (intra, inter) if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")
