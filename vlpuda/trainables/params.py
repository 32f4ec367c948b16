"""A trial's hyperparameters applied to a task's training config.

A search space returns flat values named like TrainConfig fields, plus search-only helpers such as
`rst_threshold_over_lr` (from which the space already derived `rst_threshold`). Only the fields the
trainer knows are applied; the result is validated like any other config, so a space that produces
an impossible combination fails with the trainer's own message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlpuda.config import TrainConfig


def trainer_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of `params` that are TrainConfig fields (search-only helpers dropped)."""
    return {key: value for key, value in params.items() if key in TrainConfig.model_fields}


def apply_params(cfg: TrainConfig, params: Mapping[str, Any]) -> TrainConfig:
    """`cfg` with the trial's hyperparameters applied, validated.

    Raises:
        pydantic.ValidationError: when the combination is not a valid training config.
    """
    return TrainConfig.model_validate({**cfg.model_dump(), **trainer_params(params)})
