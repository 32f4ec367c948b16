"""One search trial: a Tune function trainable that runs the training loop on N Ray Train workers.

Ray 2.60 runs Train V2, where `Tuner(TorchTrainer)` no longer works
(docs/search.md#trials-a-tune-function-trainable-that-launches-a-torchtrainer). So each Tune
trial is a small driver: it builds the trial's training configs from its hyperparameters and
launches a `TorchTrainer` whose workers run `vlpuda.trainables.loop.train`:

* DDP: the loop wraps the Student in DistributedDataParallel when torch.distributed is up (Ray
  Train brings it up: gloo on CPU, NCCL on GPU) and all-reduces the evaluation.
* Checkpoints: rank 0 writes them; every rank calls `ray.train.report` (a barrier), and
  `TuneReportCallback` forwards rank 0's metrics to Tune, one Tune result per epoch.
* Retries: the Train run is named after the Tune trial id, so a retried (or resumed) trial finds
  its last checkpoint through `ray.train.get_checkpoint()` and continues from there.
* Shared data: decoded images and text prototypes arrive as object-store references (numpy,
  zero-copy on a node), resolved with `ray.get` in each worker, never copied into the config.

`ray.tune.*` is used in the trial driver and `ray.train.*` in the workers: calling the other from
the wrong side raises.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import ray.tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from vlpuda.config import TrainConfig
from vlpuda.trainables.params import apply_params

# The last epoch's metrics, written into every checkpoint: a trial resumed after its final epoch
# has nothing left to train but must still report its result.
METRICS_FILE = "metrics.json"
# Marks a result reported again on resume: the epoch of the checkpoint a trial resumes from,
# whose first report an interruption may have cut off after Train had saved the checkpoint.
REPLAYED = "replayed_from_checkpoint"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a search shares besides the data: small, pickled with the trainable.

    Attributes:
        tasks: one resolved training config per transfer task, as dicts.
        num_workers: Ray Train workers (DDP processes) per trial.
        cpus_per_worker: logical CPUs each worker reserves.
        gpus_per_trial: GPUs the trial's workers share (0.5: two trials per GPU).
        storage_path: absolute path or URI where Train runs keep their checkpoints.
        keep_checkpoints: checkpoints kept per trial (the latest ones).
        worker_resources: custom Ray resources each worker reserves besides CPU/GPU.
    """

    tasks: tuple[dict[str, Any], ...]
    num_workers: int
    cpus_per_worker: float
    gpus_per_trial: float
    storage_path: str
    keep_checkpoints: int = 1
    worker_resources: dict[str, float] = field(default_factory=dict)
    sparsity_ladder: int = 0  # cuts of the best delta scored after the last epoch

    def scaling_config(self) -> ray.train.ScalingConfig:
        resources: dict[str, float] = {**self.worker_resources, "CPU": self.cpus_per_worker}
        if self.gpus_per_trial > 0:
            resources["GPU"] = self.gpus_per_trial / self.num_workers
        return ray.train.ScalingConfig(num_workers=self.num_workers,
                                       use_gpu=self.gpus_per_trial > 0,
                                       resources_per_worker=resources)


def train_run_name(trial_id: str) -> str:
    """Deterministic per Tune trial, so Train resumes a retried trial from its checkpoint."""
    return f"train-trial_id={trial_id}"


def trial_configs(setup: TrialSetup, params: dict[str, Any]) -> list[TrainConfig]:
    """Each task's training config with the trial's hyperparameters applied."""
    return [apply_params(TrainConfig.model_validate(task), params) for task in setup.tasks]


def run_trial(config: dict[str, Any], *, setup: TrialSetup, assets: list[Any]) -> None:
    """The Tune function trainable: one trial = one TorchTrainer run.

    Args:
        config: the trial's hyperparameters, as the search space suggested them.
        setup: everything the search's trials share (bound with tune.with_parameters).
        assets: one object-store reference to a TaskAssets per task.
    """
    trial_id = ray.tune.get_context().get_trial_id()
    configs = trial_configs(setup, config)
    finished = finished_run_metrics(setup.storage_path, train_run_name(trial_id),
                                    configs[0].epochs)
    if finished is not None:
        # Trained to the end before the search was interrupted: report the result without
        # starting a worker group just to say so.
        ray.tune.report(finished)
        return
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "configs": [c.model_dump() for c in configs],
            "assets": list(assets),  # references: each worker resolves them itself
            "trial_started_at": time.time(),
            "sparsity_ladder": setup.sparsity_ladder,
        },
        scaling_config=setup.scaling_config(),
        run_config=ray.train.RunConfig(
            name=train_run_name(trial_id),
            storage_path=setup.storage_path,
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=setup.keep_checkpoints),
            # Train's INFO lines (every report, with all metrics) would drown the search's own
            # one line per epoch; warnings and errors still show.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    trainer.fit()


class RayTrainReporter:
    """The loop's Reporter inside a Ray Train worker: every rank reports each epoch (a barrier);
    rank 0 attaches the checkpoint directory the loop wrote."""

    def __init__(self, trial_started_at: float, worker_started_at: float) -> None:
        # Wall-clock times (s since the epoch) for the start-up overhead figures: the trial
        # function starting, this worker starting; the loop adds its first step's.
        self.times = {"trial_started_at": trial_started_at,
                      "worker_started_at": worker_started_at}

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        # Where and when rank 0 trained this epoch: which node a trial ran on (a retry after a
        # lost node shows another) and how trials overlapped, from Tune's results alone.
        metrics = {**metrics, **self.times, "workers": ray.train.get_context().get_world_size(),
                   "node_id": ray.get_runtime_context().get_node_id(), "reported_at": time.time()}
        checkpoint = None
        if checkpoint_dir is not None:
            (Path(checkpoint_dir) / METRICS_FILE).write_text(json.dumps(metrics))
            checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir)
        # Synchronous upload: the loop deletes checkpoint_dir as soon as this returns.
        ray.train.report(metrics, checkpoint=checkpoint)


def _checkpoint_metrics(directory: Path) -> dict[str, Any] | None:
    """The metrics saved with a checkpoint (its epoch's report)."""
    path = directory / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _finished_metrics(directory: Path, epochs: int) -> dict[str, Any] | None:
    """The metrics saved with a checkpoint, when that checkpoint is the run's last epoch."""
    metrics = _checkpoint_metrics(directory)
    return metrics if metrics is not None and metrics.get("epoch", 0) >= epochs else None


def finished_run_metrics(storage_path: str, run_name: str, epochs: int) -> dict[str, Any] | None:
    """The final metrics of a Train run whose checkpoint already holds its last epoch, read from
    local storage (None for remote storage: the workers find out through get_checkpoint)."""
    if "://" in storage_path:
        return None
    for path in sorted((Path(storage_path) / run_name).glob(f"checkpoint_*/{METRICS_FILE}")):
        metrics = _finished_metrics(path.parent, epochs)
        if metrics is not None:
            return {**metrics, "checkpoint_path": str(path.parent)}
    return None


def train_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker function: resolve the shared assets, resume if a checkpoint exists,
    and run the training loop with a Ray reporter."""
    worker_started_at = time.time()
    from vlpuda.trainables.loop import train

    # open_clip announces each loading step at INFO, in every worker of every trial.
    logging.getLogger().setLevel(logging.WARNING)
    configs = [TrainConfig.model_validate(c) for c in loop_config["configs"]]
    assets = [ray.get(ref) for ref in loop_config["assets"]]
    reporter = RayTrainReporter(loop_config["trial_started_at"], worker_started_at)
    device = ray.train.torch.get_device()
    checkpoint = ray.train.get_checkpoint()
    ladder = int(loop_config.get("sparsity_ladder", 0))
    if checkpoint is None:
        train(configs, assets, reporter=reporter, device=device, ladder=ladder)
        return
    with checkpoint.as_directory() as directory:
        finished = _finished_metrics(Path(directory), configs[0].epochs)
        if finished is not None:
            # Every epoch is done (the trial was interrupted after its last report): report the
            # result again so Tune and Optuna see the trial complete.
            ray.train.report({**finished, "checkpoint_path": checkpoint.path})
            return
        replay = _checkpoint_metrics(Path(directory))
        if replay is not None:
            # Train saves a checkpoint before Tune has its report, so Ctrl-C or a kill in between
            # leaves an epoch that is in the checkpoint but in no record. Report it again before
            # training on: MLflow keeps one value per step (iteration), and Tune's row is marked.
            ray.train.report({**replay, REPLAYED: True})
        train(configs, assets, reporter=reporter, resume_from=Path(directory), device=device,
              ladder=ladder)
