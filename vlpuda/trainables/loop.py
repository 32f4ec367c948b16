"""The training loop of one run: CMKD (+ RST, + FixMatch) on one worker or on N DDP workers.

Read top to bottom: set-up, then one loop over iterations, then per-epoch evaluation, checkpoint
and report. The same function runs in a plain process (`vlpuda train`) and as a Ray Train worker
(`trial.py`); the only difference is the Reporter it is given and whether torch.distributed is up.

Metrics (a contract across Tune, Optuna, MLflow and the CLI; accuracies in percent):
  target_acc       best target accuracy so far: the paper's oracle selection (uses target labels)
  target_acc_last  target accuracy of the current (last) iterate
  target_acc_clip  the zero-shot CLIP head on the current encoder
  proxy_im         label-free: H(mean p) - mean H(p) on the target (higher: confident and diverse)
  proxy_clip_agreement  label-free: % of target images where task head and CLIP head agree
  stored_params    nnz(w - w0) over the visual tower + head parameters (the paper's DSP)
  delta_bytes      size of the delta artifact on disk
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from vlpuda.config import TrainConfig
from vlpuda.trainables.assets import TaskAssets, build_task_assets, load_domain, resolve_demo
from vlpuda.trainables.data import (
    DecodedDomain,
    check_same_classes,
    InfiniteSampler,
    normalize,
    strong_views,
    test_views,
    train_views,
)
from vlpuda.trainables.losses import LossWeights, cmkd_terms, fixmatch_term, ramp
from vlpuda.trainables.models import Student, load_clip, text_prototypes, visual_tower
from vlpuda.trainables.rst import (
    DeltaArtifact,
    ResidualSparsity,
    apply_delta_,
    load_delta,
    save_delta,
    stored_params,
)

DELTA_FILE = "delta.safetensors"
BEST_DELTA_FILE = "best_delta.safetensors"
STATE_FILE = "state.pt"


class Reporter(Protocol):
    """Receives each epoch's metrics and, on rank 0, a directory holding the checkpoint."""

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...


class LocalReporter:
    """For a plain process: print a line per epoch and keep the latest checkpoint in out_dir."""

    def __init__(self, out_dir: str | Path, log=print) -> None:
        self.out_dir = Path(out_dir)
        self.log = log

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoint"

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.log(format_metrics(metrics))
        if checkpoint_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Replace the previous checkpoint only once the new one is complete on disk.
        staging = self.out_dir / "checkpoint.new"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(checkpoint_dir, staging)
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        staging.rename(self.checkpoint_dir)
        best = self.checkpoint_dir / BEST_DELTA_FILE
        shutil.copy(best if best.exists() else self.checkpoint_dir / DELTA_FILE,
                    self.out_dir / BEST_DELTA_FILE)
        with open(self.out_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(metrics) + "\n")


def format_metrics(m: dict[str, Any]) -> str:
    return (
        f"epoch {m['epoch']:>3} it {m['iteration']:>6} | loss {m['loss']:.4f} | "
        f"target acc last {m['target_acc_last']:.2f} best(oracle) {m['target_acc']:.2f} "
        f"clip {m['target_acc_clip']:.2f} | agree {m['proxy_clip_agreement']:.1f} "
        f"im {m['proxy_im']:.3f} | stored {m['stored_params']:,} ({m['delta_bytes']:,} B) | "
        f"{m['seconds_per_iteration'] * 1000:.0f} ms/it"
    )


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def inverse_decay(iteration: int, gamma: float, decay: float) -> float:
    """The reference code's LambdaLR factor (1 + gamma * t)^-decay, stepped every iteration."""
    return (1.0 + gamma * iteration) ** (-decay)


def autocast_for(cfg: TrainConfig, device: torch.device):
    # Autocast only: the weights stay fp32 because RST thresholds (1e-6..1e-8) and lr-1e-7 updates
    # are far below bf16/fp16 resolution; a half-precision model would never move.
    if cfg.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if cfg.precision == "amp_bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    student: Student,
    domain: DecodedDomain,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    batch_size: int,
    autocast,
) -> dict[str, float]:
    """Target accuracy of both heads and label-free proxies; each rank scores a shard, then sums."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    was_training = student.training
    student.eval()
    indices = np.arange(rank, len(domain), world)
    num_classes = student.prototypes.shape[0]
    # correct_task, correct_clip, agree, count, sum_entropy, then sum of p per class
    sums = torch.zeros(5 + num_classes, dtype=torch.float64, device=device)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        images = torch.from_numpy(np.asarray(domain.test_images[chunk])).to(device)
        labels = torch.from_numpy(np.asarray(domain.labels[chunk])).to(device)
        with autocast:
            ((task_logits, clip_logits),) = student(normalize(test_views(images), mean, std))
        probs = task_logits.float().softmax(dim=1)
        task_pred, clip_pred = task_logits.argmax(dim=1), clip_logits.argmax(dim=1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
        sums[0] += (task_pred == labels).sum()
        sums[1] += (clip_pred == labels).sum()
        sums[2] += (task_pred == clip_pred).sum()
        sums[3] += len(chunk)
        sums[4] += entropy.sum()
        sums[5:] += probs.sum(dim=0).double()
    if world > 1:
        dist.all_reduce(sums)
    student.train(was_training)
    count = sums[3].item()
    mean_probs = sums[5:] / count
    marginal_entropy = -(mean_probs * mean_probs.clamp_min(1e-12).log()).sum().item()
    return {
        "target_acc_last": 100.0 * sums[0].item() / count,
        "target_acc_clip": 100.0 * sums[1].item() / count,
        "proxy_clip_agreement": 100.0 * sums[2].item() / count,
        "proxy_im": marginal_entropy - sums[4].item() / count,
    }


def delta_metadata(cfg: TrainConfig, assets: TaskAssets, epoch: int) -> dict[str, str]:
    return {
        "model": cfg.model,
        "pretrained": json.dumps(cfg.pretrained),
        "classes": json.dumps(assets.classes),
        "rst_mode": cfg.rst_mode_effective,
        "rst_threshold": repr(cfg.rst_threshold),
        "rst_ratio": repr(cfg.rst_ratio),
        "epoch": str(epoch),
        "config": cfg.model_dump_json(),
    }


def rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(generator: torch.Generator, state: dict[str, torch.Tensor]) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def train(
    cfg: TrainConfig,
    assets: TaskAssets | None = None,
    reporter: Reporter | None = None,
    resume_from: Path | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Run (or resume) one training run; returns the last epoch's metrics."""
    # ---- set-up ------------------------------------------------------------------------------
    cfg = resolve_demo(cfg)
    reporter = reporter or LocalReporter(cfg.out_dir)
    device = device or pick_device(cfg)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    torch.manual_seed(cfg.seed)  # identical head init on every rank

    loaded = load_clip(cfg.model, cfg.pretrained, cfg.cache_dir)
    if assets is None:
        assets = build_task_assets(cfg, loaded)
    prototypes = torch.from_numpy(np.array(assets.prototypes, dtype=np.float32))
    zs_scale = cfg.zs_scale if cfg.zs_scale is not None else assets.logit_scale
    student = Student(visual_tower(loaded), prototypes, zs_scale).to(device)
    del loaded  # the text tower is no longer referenced; its memory can go
    sparsity = ResidualSparsity(
        student.visual, cfg.rst_mode_effective, cfg.rst_threshold, cfg.rst_ratio
    )
    head_params = [p for p in student.head.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        [
            {"params": list(student.visual.parameters()), "lr": cfg.lr, "lr_base": cfg.lr},
            {"params": head_params, "lr": cfg.lr * cfg.lr_multiplier,
             "lr_base": cfg.lr * cfg.lr_multiplier},
        ],
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,  # pulls towards 0, not towards w0, as in the reference
        nesterov=True,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "amp_fp16")
    autocast = autocast_for(cfg, device)
    model = student
    if world > 1:
        model = DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None
        )

    src_sampler = InfiniteSampler(len(assets.source), cfg.batch_size, cfg.seed, rank, world)
    tgt_sampler = InfiniteSampler(
        len(assets.target), cfg.target_batch_size, cfg.seed + 1, rank, world
    )
    generator = torch.Generator().manual_seed(cfg.seed * 1009 + rank)
    weights = LossWeights(cfg.lambda1, cfg.lambda2, cfg.lambda3, cfg.label_smoothing)
    mean, std = assets.mean, assets.std
    iteration, start_epoch, best_acc, best_epoch = 0, 0, -1.0, 0
    best_delta: Path | None = None

    if resume_from is not None:
        state = torch.load(Path(resume_from) / STATE_FILE, weights_only=True)
        delta = load_delta(Path(resume_from) / DELTA_FILE)
        apply_delta_(student.visual, delta)
        student.head.load_state_dict(delta.head_state)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        src_sampler.load_state_dict(state["src_sampler"])
        tgt_sampler.load_state_dict(state["tgt_sampler"])
        set_rng_state(generator, state["rng"])
        iteration, start_epoch = int(state["iteration"]), int(state["epoch"])
        best_acc, best_epoch = float(state["best_acc"]), int(state["best_epoch"])
        kept_best = Path(resume_from) / BEST_DELTA_FILE
        best_delta = kept_best if kept_best.exists() else Path(resume_from) / DELTA_FILE

    scratch = Path(tempfile.mkdtemp(prefix="vlpuda-run-"))
    if best_delta is not None:  # keep the best delta across checkpoints of a resumed run
        shutil.copy(best_delta, scratch / "best.safetensors")
        best_delta = scratch / "best.safetensors"

    def next_images(domain: DecodedDomain, sampler: InfiniteSampler) -> tuple[torch.Tensor, ...]:
        index = sampler.next_batch()
        images = torch.from_numpy(np.asarray(domain.train_images[index])).to(device)
        labels = torch.from_numpy(np.asarray(domain.labels[index])).to(device)
        return images, labels

    def view(images: torch.Tensor) -> torch.Tensor:
        return normalize(train_views(images, cfg.image_size, cfg.pad, cfg.hflip, generator),
                         mean, std)

    # ---- training ----------------------------------------------------------------------------
    metrics: dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()  # Student.train keeps the encoder's BatchNorm statistics frozen
            loss_sum, started = torch.zeros((), device=device), time.perf_counter()
            for _ in range(cfg.iters_per_epoch):
                for group in optimizer.param_groups:
                    group["lr"] = group["lr_base"] * inverse_decay(
                        iteration, cfg.lr_gamma, cfg.lr_decay
                    )
                src_images, src_labels = next_images(assets.source, src_sampler)
                batches = [view(src_images)]
                if not cfg.baseline:
                    tgt_images, _ = next_images(assets.target, tgt_sampler)
                    batches.append(view(tgt_images))
                    if cfg.fixmatch:
                        batches.append(
                            normalize(strong_views(tgt_images, cfg.image_size, generator),
                                      mean, std)
                        )

                # One forward call for all views: DDP expects one forward per backward, and the
                # head's BatchNorm still sees each domain separately inside it.
                with autocast:
                    outputs = model(*batches)
                (src_task, src_clip) = outputs[0]
                if cfg.baseline:
                    loss = F.cross_entropy(
                        src_task.float(), src_labels, label_smoothing=cfg.label_smoothing
                    )
                else:
                    (tgt_task, tgt_clip) = outputs[1]
                    r = ramp(iteration, cfg.ramp_horizon, cfg.ramp_gamma)
                    loss = sum(cmkd_terms(
                        src_task, src_clip, src_labels, tgt_task, tgt_clip, r, weights
                    ).values())
                    if cfg.fixmatch:
                        (strong_task, strong_clip) = outputs[2]
                        loss = loss + cfg.fixmatch_factor * (
                            fixmatch_term(tgt_task, strong_task, cfg.fixmatch_threshold)
                            + fixmatch_term(tgt_clip, strong_clip, cfg.fixmatch_threshold)
                        )

                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                # RST right after every optimizer step: entries that did not move far enough
                # from w0 go back to exactly w0 (momentum buffers are kept, as in the paper).
                sparsity.reset_()
                iteration += 1
                loss_sum += loss.detach()  # no .item() here: it would sync the GPU every step
            seconds_per_iteration = (time.perf_counter() - started) / cfg.iters_per_epoch

            # ---- evaluation, checkpoint, report -------------------------------------------------
            scores = evaluate(student, assets.target, mean, std, device, cfg.eval_batch_size,
                              autocast)
            changed = sparsity.changed()
            is_best = scores["target_acc_last"] > best_acc
            if is_best:
                best_acc, best_epoch = scores["target_acc_last"], epoch + 1
            checkpoint_dir = None
            delta_bytes = 0
            if rank == 0:
                checkpoint_dir = scratch / f"epoch_{epoch + 1}"
                checkpoint_dir.mkdir()
                delta_path = checkpoint_dir / DELTA_FILE
                delta_bytes = save_delta(
                    delta_path, sparsity.named_pairs(), student.head.state_dict(),
                    delta_metadata(cfg, assets, epoch + 1),
                )
                if is_best:
                    best_delta = scratch / "best.safetensors"
                    shutil.copy(delta_path, best_delta)
                elif best_delta is not None:
                    shutil.copy(best_delta, checkpoint_dir / BEST_DELTA_FILE)
                torch.save(
                    {
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        "src_sampler": src_sampler.state_dict(),
                        "tgt_sampler": tgt_sampler.state_dict(),
                        "rng": rng_state(generator),
                        "iteration": iteration,
                        "epoch": epoch + 1,
                        "best_acc": best_acc,
                        "best_epoch": best_epoch,
                    },
                    checkpoint_dir / STATE_FILE,
                )
            metrics = {
                "epoch": epoch + 1,
                "iteration": iteration,
                "target_acc": best_acc,
                "best_epoch": best_epoch,
                **scores,
                "stored_params": stored_params(changed, student.head),
                "changed_params": changed,
                "changed_fraction": changed / sparsity.total,
                "delta_bytes": delta_bytes,
                "loss": float(loss_sum) / cfg.iters_per_epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds_per_iteration": seconds_per_iteration,
            }
            reporter(metrics, checkpoint_dir)
            if checkpoint_dir is not None:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return metrics


def evaluate_delta(cfg: TrainConfig, delta: DeltaArtifact, device: torch.device | None = None
                   ) -> dict[str, Any]:
    """Score a delta artifact: fresh base model + stored visual values + stored head."""
    device = device or pick_device(cfg)
    loaded = load_clip(cfg.model, cfg.pretrained, cfg.cache_dir)
    assert cfg.tgt is not None
    target = load_domain(cfg, cfg.tgt)
    check_same_classes("the delta", delta.classes, target.name, target.classes)
    prototypes = text_prototypes(loaded, delta.classes, cfg.prompt_template)
    zs_scale = cfg.zs_scale if cfg.zs_scale is not None else loaded.logit_scale
    student = Student(visual_tower(loaded), prototypes, zs_scale)
    reference = ResidualSparsity(student.visual)  # w0, to count what the delta changed
    apply_delta_(student.visual, delta)
    student.head.load_state_dict(delta.head_state)
    student.to(device)
    scores = evaluate(student, target, loaded.mean, loaded.std, device, cfg.eval_batch_size,
                      autocast_for(cfg, device))
    return {**scores, "stored_params": stored_params(reference.changed(), student.head)}
