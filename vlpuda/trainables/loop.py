"""The training loop of one run: CMKD (+ RST, + FixMatch) on one worker or on N DDP workers.

Read top to bottom: set-up, then one loop over iterations, then per-epoch evaluation, checkpoint
and report. The same function runs in a plain process (`vlpuda train`) and as a Ray Train worker
(`trial.py`); the only difference is the Reporter it is given and whether torch.distributed is up.

Metrics (a contract across Tune, Optuna, MLflow and the CLI; accuracies in percent):
  target_acc       best target accuracy so far: the paper's oracle selection (uses target labels);
                   the accuracy `selection` names: overall (target_acc) or class mean
                   (target_acc_class_mean, VisDA's), and best_epoch is the epoch it picked
  target_acc_last  target accuracy of the current (last) iterate
  target_acc_class_mean  mean of the per-class accuracies of the current iterate, over the
                   classes the target holds (metrics.py)
  target_acc_clip  the zero-shot CLIP head on the current encoder
  target_acc_selected  target accuracy of the epoch `selection` keeps (best_epoch)
  target_acc_holdout   accuracy on target_holdout_list (measurement only, never trained on)
  proxy_*          label-free validators on the target, higher is better (scoring.py,
                   docs/validators.md); proxy_clip_agreement compares with the drifting CLIP head
  <selection>_best the kept epoch's value of the selection metric (target_acc for the oracle)
  (every target_acc* but target_acc_holdout is absent, not zero, for an unlabeled target)
  stored_params    nnz(w - w0) over the visual tower + head parameters (the paper's DSP)
  delta_bytes      size of the delta artifact on disk
  train_started_at wall-clock time (s since the epoch) of this process's first training step
"""

from __future__ import annotations

import dataclasses
import json
import math
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
from vlpuda.objectives import ORACLE, selected_key
from vlpuda.trainables.assets import (
    TaskAssets,
    build_task_assets,
    load_domain,
    load_unlabeled_target,
    resolve_demo,
    source_split,
)
from vlpuda.trainables.decoded import DecodedDomain
from vlpuda.trainables.filekind import StateFileError, load_state_file
from vlpuda.trainables.fingerprint import FINGERPRINT_KEY, weights_fingerprint
from vlpuda.trainables.ladder import LADDER_SECONDS, LADDER_SHARE, ladder_metrics, score_ladder
from vlpuda.trainables.losses import LossWeights, cmkd_terms, fixmatch_term, ramp
from vlpuda.trainables.models import load_clip
from vlpuda.trainables.partial import align_target
from vlpuda.trainables.prune import STATE_FILE
from vlpuda.trainables.records import append_epoch
from vlpuda.trainables.resized_crop import resized_crop_views
from vlpuda.trainables.rst import (
    DeltaArtifact,
    ResidualSparsity,
    apply_delta_,
    load_delta,
    save_delta,
    stored_params,
)
from vlpuda.trainables.sampler import InfiniteSampler
from vlpuda.trainables.scoring import Forward, domain_logits, labelled_accuracy, score_target
from vlpuda.trainables.strong_view import StrongViewPrefetcher, fill_colour
from vlpuda.trainables.student import Student, text_prototypes, visual_tower
from vlpuda.trainables.views import cached_train_input, model_input, train_views

DELTA_FILE = "delta.safetensors"
BEST_DELTA_FILE = "best_delta.safetensors"


class Reporter(Protocol):
    """Receives each epoch's metrics and, on rank 0, a directory holding the checkpoint."""

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...


class LocalReporter:
    """For a plain process: print a line per epoch and keep the latest checkpoint in out_dir."""

    def __init__(self, out_dir: str | Path, log=print) -> None:
        self.out_dir = Path(out_dir)
        self.log = log
        self._reported = False

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoint"

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.log(format_metrics(metrics))
        if checkpoint_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # The metrics line first: every epoch a checkpoint holds is then in metrics.jsonl (a
        # resume drops a line past its checkpoint, and trains that epoch again).
        append_epoch(self.out_dir / "metrics.jsonl", metrics, not self._reported)
        self._reported = True
        # Replace the previous checkpoint only once the new one is complete on disk.
        staging = self.out_dir / "checkpoint.new"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(checkpoint_dir, staging)
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        staging.rename(self.checkpoint_dir)
        # Keep each task's best delta beside the checkpoint, where users look for it.
        for delta in self.checkpoint_dir.rglob(DELTA_FILE):
            best = delta.with_name(BEST_DELTA_FILE)
            target = self.out_dir / delta.parent.relative_to(self.checkpoint_dir) / BEST_DELTA_FILE
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(best if best.exists() else delta, target)


def format_metrics(m: dict[str, Any]) -> str:
    accuracy = (f"target acc last {m['target_acc_last']:.2f} class-mean "
                f"{m['target_acc_class_mean']:.2f} best(oracle) {m['target_acc']:.2f} "
                f"clip {m['target_acc_clip']:.2f} | " if "target_acc_last" in m
                else "target unlabeled | ")
    return (
        f"epoch {m['epoch']:>3} it {m['iteration']:>6} | loss {m['loss']:.4f} | {accuracy}"
        f"snd {m['proxy_snd']:.3f} im {m['proxy_im']:.3f} zs-agree "
        f"{m.get('proxy_zs_agreement', float('nan')):.1f} | kept epoch {m.get('best_epoch', '-')} | "
        f"stored {m['stored_params']:,} ({m['delta_bytes']:,} B) | "
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


def delta_metadata(cfg: TrainConfig, assets: TaskAssets, epoch: int, base: str
                   ) -> dict[str, str]:
    return {
        FINGERPRINT_KEY: base,
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


def task_key(cfg: TrainConfig) -> str:
    """How a task is named in multi-task metrics and checkpoint folders: Art_to_Clipart."""
    return f"{cfg.src}_to_{cfg.tgt}"


class TaskRun:
    """One transfer task's student, optimizer, samplers and best-so-far, advanced an epoch at a time.

    A trial over several tasks keeps one TaskRun per task and interleaves their epochs, so every
    report carries comparable aggregate objectives (mean accuracy, summed stored parameters).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        assets: TaskAssets | None,
        device: torch.device,
        resume_from: Path | None = None,
    ) -> None:
        self.cfg, self.device = cfg, device
        self.rank, world = (
            (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        )
        # Seed before building anything: every rank must start from identical weights (a
        # randomly initialised tower included), since w0 is captured before DDP broadcasts.
        torch.manual_seed(cfg.seed)
        loaded = load_clip(cfg.model, cfg.pretrained, cfg.cache_dir)
        self.assets = assets = assets or build_task_assets(cfg, loaded)
        prototypes = torch.from_numpy(np.array(assets.prototypes, dtype=np.float32))
        zs_scale = cfg.zs_scale if cfg.zs_scale is not None else assets.logit_scale
        self.student = Student(visual_tower(loaded), prototypes, zs_scale).to(device)
        del loaded  # the text tower is no longer referenced; its memory can go
        head_lr = cfg.lr * cfg.lr_multiplier
        self.optimizer = torch.optim.SGD(
            [
                {"params": list(self.student.visual.parameters()), "lr": cfg.lr,
                 "lr_base": cfg.lr},
                {"params": [p for p in self.student.head.parameters() if p.requires_grad],
                 "lr": head_lr, "lr_base": head_lr},
            ],
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,  # pulls towards 0, not towards w0, as in the paper
            nesterov=True,
            fused=device.type == "cuda",  # one kernel for all parameters instead of one each
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "amp_fp16")
        self.autocast = autocast_for(cfg, device)
        # channels_last lets cuDNN pick its fastest convolution kernels; ViTs gain nothing.
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else (
            device.type == "cuda" and hasattr(self.student.visual, "attnpool"))
        if self.channels_last:
            self.student.to(memory_format=torch.channels_last)
        # After the moves above: it gathers the visual weights into one buffer, and w0 with them.
        self.sparsity = ResidualSparsity(
            self.student.visual, cfg.rst_mode_effective, cfg.rst_threshold, cfg.rst_ratio
        )
        # Of w0, once: every delta names the base it applies to (fingerprint.py).
        self.base_fingerprint = weights_fingerprint(zip(self.sparsity.names,
                                                        self.sparsity.reference))
        self.model: torch.nn.Module = self.student
        if world > 1:
            self.model = DistributedDataParallel(
                self.student, device_ids=[device.index] if device.type == "cuda" else None
            )
        if cfg.compile:
            self.model = torch.compile(self.model)
        # The held-out source slice (source_holdout) never trains: it scores proxy_source_acc.
        self.src_train, self.src_holdout = source_split(len(assets.source), cfg.source_holdout)
        self.src_sampler = InfiniteSampler(
            len(self.src_train), cfg.batch_size, cfg.seed, self.rank, world
        )
        self.tgt_sampler = InfiniteSampler(
            len(assets.target), cfg.target_batch_size, cfg.seed + 1, self.rank, world
        )
        self.generator = torch.Generator().manual_seed(cfg.seed * 1009 + self.rank)
        # FixMatch: the target batches and their strong views come one step ahead, off this
        # thread (PIL, per image on the CPU); their randomness is a function of the step alone.
        self.strong = StrongViewPrefetcher(
            self.tgt_sampler, assets.target.train_images, cfg.image_size,
            fill_colour(assets.mean), cfg.seed, self.rank) if cfg.fixmatch else None
        self.weights = LossWeights(cfg.lambda1, cfg.lambda2, cfg.lambda3, cfg.label_smoothing)
        self.iteration, self.epoch, self.best_acc, self.best_epoch = 0, 0, -1.0, 0
        # best_value: the kept epoch's selection score; best_acc: the oracle's best accuracy;
        # selected_acc: the true accuracy of the kept epoch (the last two need target labels).
        self.best_value, self.selected_acc = -math.inf, None
        # The frozen zero-shot predictions, before any training (and before a resumed delta is
        # applied): proxy_zs_agreement compares every epoch's task head with them.
        self.zero_shot = domain_logits(self.student, assets.target, self._forward())[1].argmax(1)
        self.scratch = Path(tempfile.mkdtemp(prefix="vlpuda-run-"))
        self.best_delta: Path | None = None  # a copy of the best epoch's delta, kept on rank 0
        if resume_from is not None:
            self.load_checkpoint(Path(resume_from))

    # ---- one epoch of training ---------------------------------------------------------------
    def _images(self, domain: DecodedDomain, index: np.ndarray) -> torch.Tensor:
        """The decoded uint8 training images at `index`, on the trial's device."""
        return torch.from_numpy(np.asarray(domain.train_images[index])).to(self.device)

    def _weak_view(self, domain: DecodedDomain, index: np.ndarray,
                   images: torch.Tensor | None = None) -> torch.Tensor:
        """The training view (crop, flip) of the images at `index`, normalised for the model.

        On a CPU straight from the decoded array, per image (`cached_train_input`); on a GPU the
        uint8 batch (`images` when the caller already gathered it) is moved there first and
        cropped and normalised as a batch. Both draw the same views from the generator."""
        cfg = self.cfg
        if cfg.train_crop_scale is not None:  # the digits recipe: random resized crop
            images = images if images is not None else self._images(domain, index)
            return self._input(resized_crop_views(images, cfg.image_size, cfg.train_crop_scale,
                                                  cfg.hflip, self.generator))
        if images is None:
            if self.device.type == "cpu":
                return cached_train_input(domain.train_images, index, cfg.image_size, cfg.pad,
                                          cfg.hflip, self.generator, self.assets.mean,
                                          self.assets.std, self._layout)
            images = self._images(domain, index)
        return self._input(train_views(images, cfg.image_size, cfg.pad, cfg.hflip,
                                       self.generator))

    @property
    def _layout(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def _input(self, views: torch.Tensor) -> torch.Tensor:
        return model_input(views, self.assets.mean, self.assets.std, self._layout)

    def _loss(self, outputs: list[tuple[torch.Tensor, torch.Tensor]],
              src_labels: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        src_task, src_clip = outputs[0]
        if cfg.baseline:  # source-only fine-tuning: the paper's "Baseline" rows
            return F.cross_entropy(src_task.float(), src_labels,
                                   label_smoothing=cfg.label_smoothing)
        tgt_task, tgt_clip = outputs[1]
        r = ramp(self.iteration, cfg.ramp_horizon, cfg.ramp_gamma)
        terms = cmkd_terms(src_task, src_clip, src_labels, tgt_task, tgt_clip, r, self.weights)
        loss = sum(terms.values())
        if cfg.fixmatch:  # pseudo-labels from the weak view, applied to the strong view
            strong_task, strong_clip = outputs[2]
            loss = loss + cfg.fixmatch_factor * (
                fixmatch_term(tgt_task, strong_task, cfg.fixmatch_threshold)
                + fixmatch_term(tgt_clip, strong_clip, cfg.fixmatch_threshold)
            )
        return loss

    def train_epoch(self) -> dict[str, float]:
        cfg, assets = self.cfg, self.assets
        self.model.train()  # Student.train keeps the encoder's BatchNorm statistics frozen
        loss_sum, started = torch.zeros((), device=self.device), time.perf_counter()
        for step in range(cfg.iters_per_epoch):
            decay = inverse_decay(self.iteration, cfg.lr_gamma, cfg.lr_decay)
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr_base"] * decay
            src_index = self.src_train[self.src_sampler.next_batch()]
            src_labels = torch.from_numpy(assets.source.labels[src_index]).to(self.device)
            batches = [self._weak_view(assets.source, src_index)]
            if self.strong is not None:  # weak and strong views of the same target images
                tgt_index, strong = self.strong.next(self.iteration,
                                                     ahead=step + 1 < cfg.iters_per_epoch)
                tgt_images = self._images(assets.target, tgt_index)
                batches.append(self._weak_view(assets.target, tgt_index, tgt_images))
                batches.append(self._input(strong.to(self.device)))
            elif not cfg.baseline:
                batches.append(self._weak_view(assets.target, self.tgt_sampler.next_batch()))

            # One forward call for all views: DDP expects one forward per backward, and the
            # head's BatchNorm still sees each domain separately inside it.
            with self.autocast:
                outputs = self.model(*batches)
            loss = self._loss(outputs, src_labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # RST right after every optimizer step: entries that did not move far enough from
            # w0 go back to exactly w0 (the momentum buffers are kept, as in the paper).
            self.sparsity.reset_()
            self.iteration += 1
            loss_sum += loss.detach()  # no .item() per step: it would sync the GPU every step
        self.epoch += 1
        elapsed = time.perf_counter() - started
        metrics = {"loss": float(loss_sum) / cfg.iters_per_epoch,
                   "seconds_per_iteration": elapsed / cfg.iters_per_epoch}
        if self.device.type == "cuda":
            # What this trial's tensors held on its GPU at most (the caching allocator's peak):
            # with the CUDA context (~0.5 GiB per process, not counted here) the figure to size
            # search.gpus_per_trial by when several trials share a GPU.
            metrics["peak_gpu_memory_gib"] = torch.cuda.max_memory_reserved(self.device) / 2**30
        return metrics

    # ---- evaluation and checkpoints ----------------------------------------------------------
    def _forward(self) -> Forward:
        return Forward(self.assets.mean, self.assets.std, self.device, self.cfg.eval_batch_size,
                       self.autocast, self._layout)

    def _scores(self, fwd: Forward) -> dict[str, Any]:
        """Every target metric of the model as it is now (validators, accuracies where labels
        exist, the labelled target holdout and the held-out source slice)."""
        assets = self.assets
        scores = score_target(self.student, assets.target, fwd, self.zero_shot)
        if assets.target_holdout is not None:
            scores["target_acc_holdout"] = labelled_accuracy(self.student, assets.target_holdout,
                                                             fwd)
        if len(self.src_holdout):
            scores["proxy_source_acc"] = labelled_accuracy(self.student, assets.source, fwd,
                                                           self.src_holdout)
        return scores

    def evaluate(self) -> dict[str, Any]:
        scores, assets = self._scores(self._forward()), self.assets
        # The selection metric picks the epoch whose delta is kept; ties keep the earlier one.
        selection = self.cfg.selection_effective
        value = scores["target_acc_last" if selection == ORACLE else selection]
        self.is_best = value > self.best_value  # False for NaN: such an epoch is never kept
        if self.is_best:
            self.best_value, self.best_epoch = value, self.epoch
            self.selected_acc = scores.get("target_acc_last")
        labelled = {}
        if assets.target.labelled:
            self.best_acc = max(self.best_acc, scores["target_acc_last"])
            labelled = {"target_acc": self.best_acc}
            if self.selected_acc is not None:  # None while no epoch has been kept (NaN scores)
                labelled["target_acc_selected"] = self.selected_acc
        if selection != ORACLE:
            labelled[selected_key(selection)] = self.best_value
        changed = self.sparsity.changed()
        return {
            **labelled,
            "best_epoch": self.best_epoch,
            **scores,
            "stored_params": stored_params(changed, self.student.head),
            "changed_params": changed,
            "changed_fraction": changed / self.sparsity.total,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def save_checkpoint(self, directory: Path) -> int:
        """Delta (+ the best epoch's delta if that was earlier) and training state; rank 0 only.
        Returns the delta's size in bytes."""
        directory.mkdir(parents=True, exist_ok=True)
        delta_path = directory / DELTA_FILE
        delta_bytes = save_delta(
            delta_path, self.sparsity.named_pairs(), self.student.head.state_dict(),
            delta_metadata(self.cfg, self.assets, self.epoch, self.base_fingerprint),
        )
        if self.is_best:
            self.best_delta = self.scratch / "best.safetensors"
            shutil.copy(delta_path, self.best_delta)
        elif self.best_delta is not None:
            shutil.copy(self.best_delta, directory / BEST_DELTA_FILE)
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "src_sampler": self.src_sampler.state_dict(),
            "tgt_sampler": self.tgt_sampler.state_dict(),
            "rng": rng_state(self.generator),
            "iteration": self.iteration,
            "epoch": self.epoch,
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "selected_acc": -1.0 if self.selected_acc is None else self.selected_acc,
        }
        torch.save(state, directory / STATE_FILE)
        return delta_bytes

    def load_checkpoint(self, directory: Path) -> None:
        restart = f"remove {directory} (vlpuda train: --overwrite) to start this run over"
        state = load_state_file(directory / STATE_FILE, restart)
        delta = load_delta(directory / DELTA_FILE)
        apply_delta_(self.student.visual, delta, self.base_fingerprint)
        try:
            self.student.head.load_state_dict(delta.head_state)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.src_sampler.load_state_dict(state["src_sampler"])
            self.tgt_sampler.load_state_dict(state["tgt_sampler"])
            set_rng_state(self.generator, state["rng"])
            self.iteration, self.epoch = int(state["iteration"]), int(state["epoch"])
            self.best_acc, self.best_epoch = float(state["best_acc"]), int(state["best_epoch"])
            self.best_value = float(state.get("best_value", self.best_acc))
            selected = float(state.get("selected_acc", self.best_acc))
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            raise StateFileError(f"{directory / STATE_FILE} is not the training state of this "
                                 f"run ({type(err).__name__}: {err}); {restart}") from None
        self.selected_acc = None if selected < 0 else selected
        kept = directory / BEST_DELTA_FILE
        self.best_delta = self.scratch / "best.safetensors"
        shutil.copy(kept if kept.exists() else directory / DELTA_FILE, self.best_delta)

    def sparsity_ladder(self, steps: int, directory: Path) -> tuple[list[dict], float]:
        """The best epoch's delta cut to 1/2 .. 1/2^steps of its changed weights, each cut
        scored on the target and written to `directory` (trainables/ladder.py). Rank 0 only."""
        def score() -> dict[str, Any]:
            scores = self._scores(dataclasses.replace(self._forward(), sharded=False))
            selection = self.cfg.selection_effective
            if selection != ORACLE:  # the cut's value of the search's objective, under its key
                scores[selected_key(selection)] = scores[selection]
            return scores

        def save(path: Path) -> None:
            save_delta(path, self.sparsity.named_pairs(), self.student.head.state_dict(),
                       delta_metadata(self.cfg, self.assets, self.best_epoch,
                                      self.base_fingerprint))

        return score_ladder(self.sparsity, self.student.head, self.student.visual,
                            self.best_delta or directory / DELTA_FILE, steps, score, save,
                            directory)

    def close(self) -> None:
        if self.strong is not None:
            self.strong.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def aggregate(per_task: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A multi-task trial's objectives: mean accuracies and proxies, summed storage; plus every
    task's own metrics under '<task>/<name>'. One task: its metrics unchanged."""
    if len(per_task) == 1:
        return dict(next(iter(per_task.values())))
    runs = list(per_task.values())
    combined: dict[str, Any] = {}
    # A metric some task lacks (label metrics of an unlabeled target) has no aggregate: a mean
    # over the other tasks would pass for all of them.
    for name in [n for n in runs[0] if all(n in run for run in runs)]:
        values = [run[name] for run in runs]
        if name in ("stored_params", "changed_params", "delta_bytes", LADDER_SECONDS) \
                or name.endswith(("/stored_params", "/changed_params")):  # ladder points
            combined[name] = sum(values)
        elif name == "peak_gpu_memory_gib":  # one process trains every task: its peak
            combined[name] = max(values)
        elif name in ("epoch", "iteration"):
            combined[name] = values[0]
        elif name != "best_epoch":
            combined[name] = sum(values) / len(values)
    for key, run in per_task.items():
        combined.update({f"{key}/{name}": value for name, value in run.items()})
    return combined


def train(
    cfg: TrainConfig | list[TrainConfig],
    assets: TaskAssets | list[TaskAssets] | None = None,
    reporter: Reporter | None = None,
    resume_from: Path | None = None,
    device: torch.device | None = None,
    ladder: int = 0,
) -> dict[str, Any]:
    """Run (or resume) one run over one task, or several tasks with interleaved epochs.

    Each epoch: train every task for cfg.iters_per_epoch iterations, score every target, write
    one checkpoint (a sub-folder per task when there are several) and report once. After the
    last epoch, `ladder` > 0 also scores that many cuts of the best delta (sparsity_ladder).
    """
    cfgs = [resolve_demo(c) for c in (cfg if isinstance(cfg, list) else [cfg])]
    assets_list = assets if isinstance(assets, list) else [assets] * len(cfgs)
    reporter = reporter or LocalReporter(cfgs[0].out_dir)
    device = device or pick_device(cfgs[0])
    multi = len(cfgs) > 1

    def folder(root: Path, c: TrainConfig) -> Path:
        return root / task_key(c) if multi else root

    runs = {
        task_key(c): TaskRun(c, a, device, folder(resume_from, c) if resume_from else None)
        for c, a in zip(cfgs, assets_list)
    }
    first = next(iter(runs.values()))
    scratch = Path(tempfile.mkdtemp(prefix="vlpuda-ckpt-"))
    metrics: dict[str, Any] = {}
    # Wall clock at the first step: a search measures each trial's start-up overhead against it.
    train_started_at = time.time()
    try:
        while first.epoch < cfgs[0].epochs:
            per_task = {}
            for key, run in runs.items():
                timing = run.train_epoch()
                per_task[key] = {"epoch": run.epoch, "iteration": run.iteration,
                                 **run.evaluate(), **timing}
            checkpoint_dir = None
            if first.rank == 0:
                checkpoint_dir = scratch / f"epoch_{first.epoch}"
                for key, run in runs.items():
                    per_task[key]["delta_bytes"] = run.save_checkpoint(folder(checkpoint_dir, run.cfg))
                    if ladder and run.epoch >= run.cfg.epochs:
                        points, seconds = run.sparsity_ladder(ladder,
                                                              folder(checkpoint_dir, run.cfg))
                        per_task[key].update({**ladder_metrics(points), LADDER_SECONDS: seconds})
            else:
                for values in per_task.values():
                    values["delta_bytes"] = 0
            metrics = {**aggregate(per_task), "train_started_at": train_started_at}
            if LADDER_SECONDS in metrics:  # the ladder's cost against the whole run's
                metrics[LADDER_SHARE] = metrics[LADDER_SECONDS] / max(
                    time.time() - train_started_at, 1e-9)
            reporter(metrics, checkpoint_dir)
            if checkpoint_dir is not None:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        for run in runs.values():
            run.close()
    return metrics


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
