"""The training loop of one run: CMKD (+ RST, + FixMatch) on one worker or on N DDP workers.

Read top to bottom: set-up, then one loop over iterations, then per-epoch evaluation, checkpoint
and report. The same function runs in a plain process (`vlpuda train`) and as a Ray Train worker
(`trial.py`); the only difference is the Reporter it is given and whether torch.distributed is up.
What each step calls lives beside it: optimizer.py, evaluation.py, checkpoint.py, reporting.py.

Metrics: the keys a run reports are a contract across Tune, Optuna, MLflow and the CLI; their
names live in vlpuda/objectives.py (RESULT_METRICS) and their meaning in docs/metrics.md.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from vlpuda.config import TrainConfig
from vlpuda.objectives import ORACLE, selected_key
from vlpuda.trainables.assets import TaskAssets, build_task_assets, resolve_demo, source_split
from vlpuda.trainables.checkpoint import load_checkpoint, save_checkpoint
from vlpuda.trainables.decoded import DecodedDomain
from vlpuda.trainables.device import autocast_for, pick_device
from vlpuda.trainables.evaluation import sparsity_ladder, target_scores
from vlpuda.trainables.fingerprint import weights_fingerprint
from vlpuda.trainables.ladder import LADDER_SECONDS, LADDER_SHARE, ladder_metrics
from vlpuda.trainables.losses import LossWeights, cmkd_terms, fixmatch_term, partial_set_loss, ramp
from vlpuda.trainables.models import load_clip
from vlpuda.trainables.optimizer import inverse_decay, sgd_optimizer
from vlpuda.trainables.partial import label_set
from vlpuda.trainables.reporting import LocalReporter, Reporter, aggregate, task_key
from vlpuda.trainables.resized_crop import resized_crop_views
from vlpuda.trainables.rst import ResidualSparsity, stored_params
from vlpuda.trainables.sampler import InfiniteSampler
from vlpuda.trainables.scoring import Forward, domain_logits
from vlpuda.trainables.strong_view import StrongViewPrefetcher, fill_colour
from vlpuda.trainables.student import Student, visual_tower
from vlpuda.trainables.views import cached_train_input, model_input, train_views


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
        self.optimizer = sgd_optimizer(self.student, cfg, device)
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
        self.zero_shot = domain_logits(self.student, assets.target,
                                       self.eval_forward())[1].argmax(1)
        # pda: the classes the Gini terms see, from the second epoch on (None: all of them).
        self.label_set: torch.Tensor | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="vlpuda-run-"))
        self.best_delta: Path | None = None  # a copy of the best epoch's delta, kept on rank 0
        if resume_from is not None:
            load_checkpoint(self, Path(resume_from))
            if cfg.pda and self.epoch:  # the label set the interrupted run would use next
                self._update_label_set()

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
        columns = self.label_set
        terms = cmkd_terms(src_task, src_clip, src_labels, tgt_task, tgt_clip, r, self.weights,
                           columns)
        fixmatch = 0.0
        if cfg.fixmatch:  # pseudo-labels from the weak view, applied to the strong view
            strong_task, strong_clip = outputs[2]
            fixmatch = cfg.fixmatch_factor * (
                fixmatch_term(tgt_task, strong_task, cfg.fixmatch_threshold, columns)
                + fixmatch_term(tgt_clip, strong_clip, cfg.fixmatch_threshold, columns)
            )
        if cfg.pda:  # the reference's partial-set weights (losses.partial_set_loss)
            return partial_set_loss(terms, fixmatch)
        return sum(terms.values()) + fixmatch

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

    # ---- evaluation ---------------------------------------------------------------------
    def eval_forward(self) -> Forward:
        return Forward(self.assets.mean, self.assets.std, self.device, self.cfg.eval_batch_size,
                       self.autocast, self._layout)

    def _update_label_set(self) -> None:
        """pda: the next epoch's label set, from the task head's target predictions now (the
        reference predicts the target at the start of each epoch from the second on)."""
        task, _ = domain_logits(self.student, self.assets.target, self.eval_forward())
        found = label_set(task.argmax(dim=1), task.shape[1], self.cfg.pda_min_predictions)
        self.label_set = None if found is None else found.to(self.device)

    def evaluate(self) -> dict[str, Any]:
        assets = self.assets
        scores = target_scores(self.student, assets, self.eval_forward(), self.zero_shot,
                               self.src_holdout)
        if self.cfg.pda:
            self._update_label_set()
            scores["pda_label_set"] = (len(self.label_set) if self.label_set is not None
                                       else len(assets.classes))
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

    def close(self) -> None:
        if self.strong is not None:
            self.strong.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


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
                    task_dir = folder(checkpoint_dir, run.cfg)
                    per_task[key]["delta_bytes"] = save_checkpoint(run, task_dir)
                    if ladder and run.epoch >= run.cfg.epochs:
                        points, seconds = sparsity_ladder(run, ladder, task_dir)
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
