"""Scoring a checkpoint on a domain: logits once per epoch, then every metric from them.

One pass over the target gives both heads' logits; accuracies (where labels exist) and the
label-free validators (vlpuda.trainables.validators, docs/validators.md) are computed from them.
MixVal alone needs more forward passes, of mixed image pairs, bounded to a quarter of a pass.
Under DDP each rank scores a shard and the shards are gathered, so every rank computes the same
validators from the whole set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from vlpuda.trainables import validators as v
from vlpuda.trainables.decoded import DecodedDomain
from vlpuda.trainables.metrics import class_mean_accuracy, per_class_counts
from vlpuda.trainables.views import model_input

# N-dependent validators (SND, BNM) run on at most this many target images, one fixed sample.
VALIDATOR_SAMPLE = 10_000
VALIDATOR_SEED = 0
# MixVal probes at most this share of an evaluation pass: two probe types, each over a fixed
# subset of N * MIXVAL_SHARE / 2 images, so at most MIXVAL_SHARE * N extra forwards.
MIXVAL_SHARE = 0.25
MIXVAL_BATCH = 128


def _world(sharded: bool = True) -> tuple[int, int]:
    return ((dist.get_rank(), dist.get_world_size()) if sharded and dist.is_initialized()
            else (0, 1))


@dataclass(frozen=True)
class Forward:
    """How to run the model on a domain's uint8 test images."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    batch_size: int
    autocast: object
    memory_format: torch.memory_format = torch.contiguous_format
    # False: this rank scores every image alone while the others wait (the sparsity ladder)
    sharded: bool = True

    def logits(self, student, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Task and CLIP logits (fp32, on the device) of uint8 or float 0..255 HWC images."""
        with self.autocast:
            ((task, clip),) = student(model_input(images.to(self.device), self.mean, self.std,
                                                  self.memory_format))
        return task.float(), clip.float()


def _gather_rows(local: torch.Tensor, n: int, sharded: bool) -> torch.Tensor:
    """Rows scored rank-strided (rank r holds rows r, r + W, ...) back in order, on every rank."""
    rank, world = _world(sharded)
    if world == 1:
        return local
    size = (n + world - 1) // world
    padded = torch.zeros((size, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for r, part in enumerate(parts):
        out[r::world] = part[: len(range(r, n, world))]
    return out


@torch.no_grad()
def domain_logits(student, domain: DecodedDomain, fwd: Forward,
                  index: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Task and CLIP logits (N x C, on the CPU) of `domain`'s test images (or those at `index`)."""
    rank, world = _world(fwd.sharded)
    index = np.arange(len(domain)) if index is None else np.asarray(index)
    mine = index[rank::world]
    was_training = student.training
    student.eval()
    tasks, clips = [], []
    for start in range(0, len(mine), fwd.batch_size):
        images = torch.from_numpy(np.asarray(domain.test_images[mine[start:start + fwd.batch_size]]))
        task, clip = fwd.logits(student, images)
        tasks.append(task)
        clips.append(clip)
    student.train(was_training)
    c = student.prototypes.shape[0]
    task = torch.cat(tasks) if tasks else torch.empty((0, c), device=fwd.device)
    clip = torch.cat(clips) if clips else torch.empty((0, c), device=fwd.device)
    return (_gather_rows(task, len(index), fwd.sharded).cpu(),
            _gather_rows(clip, len(index), fwd.sharded).cpu())


@torch.no_grad()
def mixval_scores(student, domain: DecodedDomain, pseudo: np.ndarray, fwd: Forward
                  ) -> dict[str, float]:
    """ICE on intra- and inter-cluster mixes of a fixed target subset
    (docs/validators.md#5-mixval)."""
    rank, world = _world(fwd.sharded)
    subset_size = max(2, int(len(domain) * MIXVAL_SHARE / 2))
    subset = v.fixed_subsample(len(domain), subset_size, VALIDATOR_SEED)
    pairs = v.mixval_pairs(pseudo, subset, MIXVAL_BATCH, VALIDATOR_SEED)
    was_training = student.training
    student.eval()
    counts = torch.zeros(4, dtype=torch.float64, device=fwd.device)  # hits, pairs per kind

    def predict(images: torch.Tensor) -> torch.Tensor:
        return fwd.logits(student, images)[0].argmax(dim=1).cpu()

    for k, kind in enumerate(("intra", "inter")):
        a, b = (side[rank::world] for side in pairs[kind])
        for start in range(0, len(a), fwd.batch_size):
            ia, ib = a[start:start + fwd.batch_size], b[start:start + fwd.batch_size]
            images_a = torch.from_numpy(np.asarray(domain.test_images[ia])).float()
            images_b = torch.from_numpy(np.asarray(domain.test_images[ib])).float()
            ice = v.mixval_ice(predict, images_a, images_b, torch.from_numpy(pseudo[ia]))
            counts[2 * k] += ice * len(ia)
            counts[2 * k + 1] += len(ia)
    student.train(was_training)
    if world > 1:
        dist.all_reduce(counts)
    intra, inter = (float(counts[i] / counts[i + 1]) if counts[i + 1] > 0 else float("nan")
                    for i in (0, 2))
    return {"proxy_mixval": v.mean_ice(intra, inter), "proxy_mixval_intra": intra,
            "proxy_mixval_inter": inter}


def label_free_scores(task: torch.Tensor, clip: torch.Tensor, zero_shot: torch.Tensor | None,
                      sample: np.ndarray) -> dict[str, float]:
    """Every validator computed from logits alone (plus the frozen zero-shot predictions)."""
    pred = task.argmax(dim=1)
    scores = {
        "proxy_entropy": v.neg_entropy(task),
        "proxy_im": v.information_maximization(task),
        "proxy_bnm": v.batch_nuclear_norm(task[sample]),
        "proxy_snd": v.soft_neighborhood_density(task[sample]),
        # The drifting CLIP head of the trained encoder; kept as a diagnostic.
        "proxy_clip_agreement": v.agreement(pred, clip.argmax(dim=1)),
    }
    if zero_shot is not None:
        scores["proxy_zs_agreement"] = v.agreement(pred, zero_shot)
    return scores


def score_target(student, domain: DecodedDomain, fwd: Forward,
                 zero_shot: torch.Tensor | None = None, mixval: bool = True
                 ) -> dict[str, float]:
    """All of one epoch's target metrics. Accuracies only where the domain has labels: for an
    unlabeled target they are absent, not zero."""
    started = first = time.perf_counter()
    task, clip = domain_logits(student, domain, fwd)
    sample = v.fixed_subsample(len(domain), VALIDATOR_SAMPLE, VALIDATOR_SEED)
    scores = label_free_scores(task, clip, zero_shot, sample)
    pass_seconds = time.perf_counter() - started
    if mixval:
        started = time.perf_counter()
        scores.update(mixval_scores(student, domain, task.argmax(dim=1).numpy(), fwd))
        # Cost of the extra MixVal forwards against the pass that scored everything else.
        scores["mixval_cost_ratio"] = (time.perf_counter() - started) / max(pass_seconds, 1e-9)
    if domain.labelled:
        labels = torch.from_numpy(domain.labels)
        pred = task.argmax(dim=1)
        scores["target_acc_last"] = v.accuracy(pred, labels)
        # VisDA's metric; over the classes the target holds (a PDA target has fewer)
        scores["target_acc_class_mean"] = class_mean_accuracy(
            *per_class_counts(pred, labels, task.shape[1]))
        scores["target_acc_clip"] = v.accuracy(clip.argmax(dim=1), labels)
    scores["eval_seconds"] = time.perf_counter() - first
    return scores


def labelled_accuracy(student, domain: DecodedDomain, fwd: Forward,
                      index: np.ndarray | None = None) -> float:
    """Task-head accuracy (%) on a labelled domain's images (all, or those at `index`)."""
    task, _ = domain_logits(student, domain, fwd, index)
    labels = domain.labels if index is None else domain.labels[index]
    return v.accuracy(task.argmax(dim=1), torch.from_numpy(labels))
