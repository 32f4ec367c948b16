"""`vlpuda prefetch` fills (here: verifies, offline) the cache nodes load weights from."""

from __future__ import annotations

import time

import open_clip
import torch

from helpers import seed_hub_repo
from vlpuda.cli import main


def test_prefetch_verifies_a_seeded_cache(tmp_path, capsys):
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-vit-test")
    config = {"model_cfg": open_clip.get_model_config("tiny-vit-test"),
              "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    seed_hub_repo(tmp_path, "local/tiny-clip",
                  config, {k: v.contiguous() for k, v in model.state_dict().items()})
    assert main(["prefetch", "--model", "hf-hub:local/tiny-clip",
                 "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "verified offline" in out


def test_prefetch_offline_without_cache_fails_fast_with_instructions(tmp_path, capsys):
    started = time.monotonic()
    assert main(["prefetch", "--model", "RN50", "--pretrained", "openai",
                 "--cache-dir", str(tmp_path / "empty")]) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert "--pretrained" in err and "local-dir:" in err and "HF_HUB_OFFLINE" in err
