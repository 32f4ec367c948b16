"""Fixtures for search tests: one local Ray for the session, a tiny task any Ray worker can load.

Ray worker processes do not see the tiny open_clip configs that tests/conftest.py registers, so
the model is written as a `local-dir:` folder (config + weights) that every process loads by path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import write_local_dir_model, write_tiny_domains

# Logical CPUs for the session's Ray: two 2-worker trials need 6 (each: its driver + 2 workers).
# More logical CPUs than the 2 cores is fine: tiny trials spend most of their time starting up.
RAY_CPUS = 6


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it (starting one costs 5-10 s on 2 cores); with
    its dashboard, whose State API Train needs to clean up stopped trials' placement groups."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=RAY_CPUS)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> tuple[Path, str]:
    """Two ImageFolder domains (4 classes x 24 images, 32 px) and a tiny local-dir ViT."""
    root = tmp_path_factory.mktemp("tiny-search")
    data = write_tiny_domains(root / "data", per_class=24)
    model = write_local_dir_model(root / "model", "tiny-vit-test")
    return data, model
