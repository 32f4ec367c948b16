"""Shared test set-up: offline hub, tiny open_clip architectures registered at test time."""

from __future__ import annotations

import os
from pathlib import Path

# Before open_clip / huggingface_hub are imported: a missing weight file must fail at once, not
# after huggingface_hub's ~47 s of retries.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import open_clip  # noqa: E402
import pytest  # noqa: E402

MODEL_CONFIGS = Path(__file__).parent / "model_configs"
TINY_MODELS = ("tiny-vit-test", "tiny-rn-test")

for _cfg in sorted(MODEL_CONFIGS.glob("*.json")):
    open_clip.add_model_config(_cfg)


@pytest.fixture(params=TINY_MODELS)
def tiny_model_name(request: pytest.FixtureRequest) -> str:
    """Both tiny architectures: the ViT and the ModifiedResNet code paths."""
    return request.param
