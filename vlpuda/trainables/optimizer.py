"""The optimizer and its learning-rate schedule: SGD Nesterov with a head learning rate of
lr * lr_multiplier, decayed every iteration by the reference code's inverse schedule."""

from __future__ import annotations

import torch

from vlpuda.config import TrainConfig
from vlpuda.trainables.student import Student


def sgd_optimizer(student: Student, cfg: TrainConfig, device: torch.device) -> torch.optim.SGD:
    """One group for the image tower (lr) and one for the head's trainable parameters
    (lr * lr_multiplier); each keeps its undecayed rate as `lr_base`."""
    head_lr = cfg.lr * cfg.lr_multiplier
    return torch.optim.SGD(
        [
            {"params": list(student.visual.parameters()), "lr": cfg.lr,
             "lr_base": cfg.lr},
            {"params": [p for p in student.head.parameters() if p.requires_grad],
             "lr": head_lr, "lr_base": head_lr},
        ],
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,  # pulls towards 0, not towards w0, as in the paper
        nesterov=True,
        fused=device.type == "cuda",  # one kernel for all parameters instead of one each
    )


def inverse_decay(iteration: int, gamma: float, decay: float) -> float:
    """The reference code's LambdaLR factor (1 + gamma * t)^-decay, stepped every iteration."""
    return (1.0 + gamma * iteration) ** (-decay)
