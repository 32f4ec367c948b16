"""Evaluating a model: a run's target scores each epoch, its sparsity ladder, and a saved delta
scored from scratch (`vlpuda evaluate`). How one domain is scored is scoring.py's job.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlpuda.config import TrainConfig
from vlpuda.layout import DELTA_FILE
from vlpuda.objectives import ORACLE, selected_key
from vlpuda.trainables.assets import TaskAssets, load_domain, load_unlabeled_target
from vlpuda.trainables.checkpoint import delta_metadata
from vlpuda.trainables.decoded import DecodedDomain
from vlpuda.trainables.device import autocast_for, pick_device
from vlpuda.trainables.ladder import score_ladder
from vlpuda.trainables.models import load_clip
from vlpuda.trainables.partial import align_target
from vlpuda.trainables.rst import (
    DeltaArtifact,
    ResidualSparsity,
    apply_delta_,
    save_delta,
    stored_params,
)
from vlpuda.trainables.scoring import Forward, domain_logits, labelled_accuracy, score_target
from vlpuda.trainables.student import Student, text_prototypes, visual_tower

if TYPE_CHECKING:
    from vlpuda.trainables.loop import TaskRun


def evaluate(
    student: Student,
    domain: DecodedDomain,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    batch_size: int,
    autocast,
    memory_format: torch.memory_format = torch.contiguous_format,
    sharded: bool = True,
    zero_shot: torch.Tensor | None = None,
) -> dict[str, float]:
    """Target accuracies (labelled targets only) and label-free validators; each rank scores a
    shard, then the shards are gathered (scoring.py). `memory_format`: the input layout the model
    trains with (channels_last for such a ResNet); `sharded=False`: this rank scores every image
    alone (the others are not taking part); `zero_shot`: the frozen zero-shot predictions."""
    fwd = Forward(mean, std, device, batch_size, autocast, memory_format, sharded)
    return score_target(student, domain, fwd, zero_shot)


def target_scores(student: Student, assets: TaskAssets, fwd: Forward,
                  zero_shot: torch.Tensor | None, src_holdout) -> dict[str, Any]:
    """Every target metric of the model as it is now (validators, accuracies where labels
    exist, the labelled target holdout and the held-out source slice)."""
    scores = score_target(student, assets.target, fwd, zero_shot)
    if assets.target_holdout is not None:
        scores["target_acc_holdout"] = labelled_accuracy(student, assets.target_holdout, fwd)
    if len(src_holdout):
        scores["proxy_source_acc"] = labelled_accuracy(student, assets.source, fwd, src_holdout)
    return scores


def sparsity_ladder(run: TaskRun, steps: int, directory: Path) -> tuple[list[dict], float]:
    """The best epoch's delta cut to 1/2 .. 1/2^steps of its changed weights, each cut
    scored on the target and written to `directory` (trainables/ladder.py). Rank 0 only."""
    def score() -> dict[str, Any]:
        fwd = dataclasses.replace(run.eval_forward(), sharded=False)
        scores = target_scores(run.student, run.assets, fwd, run.zero_shot, run.src_holdout)
        selection = run.cfg.selection_effective
        if selection != ORACLE:  # the cut's value of the search's objective, under its key
            scores[selected_key(selection)] = scores[selection]
        return scores

    def save(path: Path) -> None:
        save_delta(path, run.sparsity.named_pairs(), run.student.head.state_dict(),
                   delta_metadata(run.cfg, run.assets, run.best_epoch, run.base_fingerprint))

    return score_ladder(run.sparsity, run.student.head, run.student.visual,
                        run.best_delta or directory / DELTA_FILE, steps, score, save, directory)


def evaluate_delta(cfg: TrainConfig, delta: DeltaArtifact, device: torch.device | None = None,
                   allow_other_base: bool = False) -> dict[str, Any]:
    """Score a delta artifact: fresh base model + stored visual values + stored head."""
    device = device or pick_device(cfg)
    loaded = load_clip(cfg.model, cfg.pretrained, cfg.cache_dir)
    assert cfg.tgt is not None
    if cfg.unlabeled_target:  # scored by the validators only, in the delta's class order
        target = load_unlabeled_target(cfg, delta.classes)
    else:
        target = align_target(cfg.pda, "the delta", delta.classes, load_domain(cfg, cfg.tgt))
    prototypes = text_prototypes(loaded, delta.classes, cfg.prompt_template)
    zs_scale = cfg.zs_scale if cfg.zs_scale is not None else loaded.logit_scale
    student = Student(visual_tower(loaded), prototypes, zs_scale)
    reference = ResidualSparsity(student.visual)  # w0, to count what the delta changed
    fwd = Forward(loaded.mean, loaded.std, torch.device("cpu"), cfg.eval_batch_size,
                  nullcontext())
    zero_shot = domain_logits(student, target, fwd)[1].argmax(1)  # the frozen zero-shot head
    apply_delta_(student.visual, delta, allow_other_base=allow_other_base)
    changed = reference.changed()  # before the move: w0 stays where the model was built
    student.head.load_state_dict(delta.head_state)
    student.to(device)
    scores = evaluate(student, target, loaded.mean, loaded.std, device, cfg.eval_batch_size,
                      autocast_for(cfg, device), zero_shot=zero_shot)
    return {**scores, "stored_params": stored_params(changed, student.head)}
