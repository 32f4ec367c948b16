"""What a run reports each epoch: the multi-task aggregate, the console line, and the reporter
that keeps a plain process's metrics.jsonl, checkpoint and best deltas in its out_dir.

A Ray Train worker is given another Reporter (trial.py); the loop only calls it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Protocol

from vlpuda.config import TrainConfig
from vlpuda.layout import BEST_DELTA_FILE, DELTA_FILE
from vlpuda.trainables.ladder import LADDER_SECONDS
from vlpuda.trainables.records import append_epoch


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
    """An epoch's line on the console."""
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


def task_key(cfg: TrainConfig) -> str:
    """How a task is named in multi-task metrics and checkpoint folders: Art_to_Clipart."""
    return f"{cfg.src}_to_{cfg.tgt}"


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
