"""A run's checkpoint: its delta (+ the kept epoch's delta) and the training state to resume from.

The state holds everything a resumed run needs to continue bit for bit: optimizer and scaler,
both samplers' positions, the view generator and torch's RNG states, the counters and the
best-so-far. Written on rank 0 only; every rank reads it back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vlpuda.config import TrainConfig
from vlpuda.layout import BEST_DELTA_FILE, DELTA_FILE
from vlpuda.trainables.assets import TaskAssets
from vlpuda.trainables.filekind import StateFileError, load_state_file
from vlpuda.trainables.fingerprint import FINGERPRINT_KEY
from vlpuda.trainables.prune import STATE_FILE
from vlpuda.trainables.rst import apply_delta_, load_delta, save_delta

if TYPE_CHECKING:
    from vlpuda.trainables.loop import TaskRun


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


def save_checkpoint(run: TaskRun, directory: Path) -> int:
    """Delta (+ the best epoch's delta if that was earlier) and training state; rank 0 only.
    Returns the delta's size in bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    delta_path = directory / DELTA_FILE
    delta_bytes = save_delta(
        delta_path, run.sparsity.named_pairs(), run.student.head.state_dict(),
        delta_metadata(run.cfg, run.assets, run.epoch, run.base_fingerprint),
    )
    if run.is_best:
        run.best_delta = run.scratch / "best.safetensors"
        shutil.copy(delta_path, run.best_delta)
    elif run.best_delta is not None:
        shutil.copy(run.best_delta, directory / BEST_DELTA_FILE)
    state = {
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "src_sampler": run.src_sampler.state_dict(),
        "tgt_sampler": run.tgt_sampler.state_dict(),
        "rng": rng_state(run.generator),
        "iteration": run.iteration,
        "epoch": run.epoch,
        "best_acc": run.best_acc,
        "best_epoch": run.best_epoch,
        "best_value": run.best_value,
        "selected_acc": -1.0 if run.selected_acc is None else run.selected_acc,
    }
    torch.save(state, directory / STATE_FILE)
    return delta_bytes


def load_checkpoint(run: TaskRun, directory: Path) -> None:
    """Put `run` back where the checkpoint in `directory` left it."""
    restart = f"remove {directory} (vlpuda train: --overwrite) to start this run over"
    state = load_state_file(directory / STATE_FILE, restart)
    delta = load_delta(directory / DELTA_FILE)
    apply_delta_(run.student.visual, delta, run.base_fingerprint)
    try:
        run.student.head.load_state_dict(delta.head_state)
        run.optimizer.load_state_dict(state["optimizer"])
        run.scaler.load_state_dict(state["scaler"])
        run.src_sampler.load_state_dict(state["src_sampler"])
        run.tgt_sampler.load_state_dict(state["tgt_sampler"])
        set_rng_state(run.generator, state["rng"])
        run.iteration, run.epoch = int(state["iteration"]), int(state["epoch"])
        run.best_acc, run.best_epoch = float(state["best_acc"]), int(state["best_epoch"])
        run.best_value = float(state.get("best_value", run.best_acc))
        selected = float(state.get("selected_acc", run.best_acc))
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise StateFileError(f"{directory / STATE_FILE} is not the training state of this "
                             f"run ({type(err).__name__}: {err}); {restart}") from None
    run.selected_acc = None if selected < 0 else selected
    kept = directory / BEST_DELTA_FILE
    run.best_delta = run.scratch / "best.safetensors"
    shutil.copy(kept if kept.exists() else directory / DELTA_FILE, run.best_delta)
