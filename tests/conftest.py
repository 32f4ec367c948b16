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


# Logical CPUs for the test session's Ray: two 2-worker trials need 6 (each: its driver + 2
# workers). More logical CPUs than the 2 cores is fine: tiny trials mostly wait on start-up.
RAY_CPUS = 6


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> tuple[Path, str]:
    """The tiny task for searches (4 classes x 24 images a domain, 32 px): (data dir, model)."""
    from helpers import write_tiny_task

    return write_tiny_task(tmp_path_factory.mktemp("tiny-search"), per_class=24)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it (starting one costs 5-10 s on 2 cores); with
    its dashboard, whose State API Train needs to clean up stopped trials' placement groups.
    Yields its address, for subprocesses that should join it."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=RAY_CPUS)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_unlabeled_assets(tiny_assets) -> tuple[Path, str]:
    """The tiny task with its Clipart images also as a flat, unlabeled folder `ClipartFlat`."""
    import shutil

    data, model = tiny_assets
    flat = data / "ClipartFlat"
    if not flat.is_dir():
        flat.mkdir()
        for i, image in enumerate(sorted((data / "Clipart").rglob("*.png"))):
            shutil.copy(image, flat / f"{i:04d}.png")
    return data, model
