"""Builders shared by the GPU checks."""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from vlpuda.config import build_config
from vlpuda.trainables.loop import TaskRun


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, in float64 on the CPU."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return float((actual - expected).norm() / expected.norm())


def tiny_visual(arch: str, seed: int = 0) -> torch.nn.Module:
    """A random-init open_clip image tower (the same weights for the same seed)."""
    torch.manual_seed(seed)
    return open_clip.create_model(arch).visual


def tiny_task_run(data_dir: Path, arch: str, device: torch.device, out_dir: Path,
                  **overrides) -> TaskRun:
    """A TaskRun on the tiny two-domain task (tests/helpers.py) with a random-init tiny tower."""
    from helpers import tiny_train_overrides

    keys = {**tiny_train_overrides(data_dir, arch, out_dir), "device": device.type, **overrides}
    cfg, _ = build_config(keys)
    return TaskRun(cfg, None, device)
