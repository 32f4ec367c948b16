"""Fixtures for search tests: a tiny task any Ray worker can load (the session's Ray is
`ray_session` in tests/conftest.py).

Ray worker processes do not see the tiny open_clip configs that tests/conftest.py registers, so
the model is written as a `local-dir:` folder (config + weights) that every process loads by path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import write_local_dir_model, write_tiny_domains


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> tuple[Path, str]:
    """Two ImageFolder domains (4 classes x 24 images, 32 px) and a tiny local-dir ViT."""
    root = tmp_path_factory.mktemp("tiny-search")
    data = write_tiny_domains(root / "data", per_class=24)
    model = write_local_dir_model(root / "model", "tiny-vit-test")
    return data, model
