"""Where a run computes and in which precision."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from vlpuda.config import TrainConfig


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def autocast_for(cfg: TrainConfig, device: torch.device):
    # Autocast only: the weights stay fp32 because RST thresholds (1e-6..1e-8) and lr-1e-7 updates
    # are far below bf16/fp16 resolution; a half-precision model would never move.
    if cfg.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if cfg.precision == "amp_bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
