"""Small builders shared by tests: a tiny task on disk and a tiny local-dir CLIP.

Everything here is real files that the real loaders read; nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file

MODEL_CONFIGS = Path(__file__).parent / "model_configs"
CLASSES = ("Alarm_Clock", "Bike", "TV", "Table")
COLOURS = {"Alarm_Clock": (220, 40, 40), "Bike": (40, 200, 40), "TV": (40, 40, 220),
           "Table": (220, 220, 40)}


def write_tiny_domains(root: Path, domains=("Art", "Clipart"), per_class: int = 12,
                       size: int = 32, seed: int = 0) -> Path:
    """Two ImageFolder domains with real Office-Home class names. Each class has its own colour
    and a domain-specific background, so there is something to learn and a domain shift."""
    rng = np.random.default_rng(seed)
    for d, domain in enumerate(domains):
        for c, name in enumerate(CLASSES):
            folder = root / domain / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = rng.integers(0, 60, size=(size, size, 3)) + 80 * d
                top, left = rng.integers(0, size // 2, size=2)
                image[top:top + size // 2, left:left + size // 2] = COLOURS[name]
                Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def write_local_dir_model(folder: Path, arch: str = "tiny-vit-test", seed: int = 0) -> str:
    """A `local-dir:` open_clip model (config + safetensors) any process can load."""
    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = json.loads((MODEL_CONFIGS / f"{arch}.json").read_text())
    torch.manual_seed(seed)
    model = open_clip.create_model(arch)
    config = {"model_cfg": model_cfg,
              "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


def tiny_train_overrides(data_dir: Path, model: str, out_dir: Path) -> dict:
    """Training keys for a seconds-long run on the tiny task."""
    return {
        "benchmark": "tiny", "data_dir": str(data_dir), "src": "Art", "tgt": "Clipart",
        "model": model, "pretrained": None, "train_resize": 32, "image_size": 32, "pad": 2,
        "lr": 1e-3, "lr_multiplier": 10, "batch_size": 8, "target_batch_size": 8,
        "iters_per_epoch": 4, "epochs": 2, "ramp_horizon": 8, "ramp_gamma": 5.0,
        "eval_batch_size": 16, "device": "cpu", "out_dir": str(out_dir),
        "image_cache_dir": str(out_dir.parent / "image-cache"),
    }


HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"


def seed_hub_repo(cache: Path, repo: str, config: dict, state: dict[str, torch.Tensor]) -> None:
    """The layout huggingface_hub reads offline: refs/main -> snapshots/<revision>/files."""
    org, name = repo.split("/")
    root = cache / f"models--{org}--{name}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(HUB_REVISION)
    snapshot = root / "snapshots" / HUB_REVISION
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_config.json").write_text(json.dumps(config))
    save_file(state, str(snapshot / "open_clip_model.safetensors"))


def write_tiny_task(root: Path, per_class: int) -> tuple[Path, str]:
    """A tiny transfer task under `root`: the two domains and a tiny `local-dir:` ViT. Ray
    worker processes do not see the open_clip configs tests/conftest.py registers, so the model
    is a folder (config + weights) that every process loads by path."""
    return (write_tiny_domains(root / "data", per_class=per_class),
            write_local_dir_model(root / "model", "tiny-vit-test"))


# ---- searches whose first trials are known -------------------------------------------------
# Trials with known parameters, so what a scheduler or budget stops does not depend on the sampler.
COMMON = {"lambda1": 0.25, "lambda2": 0.1, "lambda3": 0.025, "label_smoothing": 0.1}
LEARNS = {**COMMON, "lr": 1e-3, "lr_multiplier": 10, "rst_threshold_over_lr": 0.1}
FROZEN = {**COMMON, "lr": 1e-9, "lr_multiplier": 1, "rst_threshold_over_lr": 1.0}
DENSE = {**COMMON, "lr": 1e-3, "lr_multiplier": 10, "rst_threshold_over_lr": 0.01}


def seed_study(run_dir: Path, name: str, *points: dict) -> None:
    """A new run dir whose study `name` runs `points` first, in order."""
    import optuna

    run_dir.mkdir(parents=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{run_dir}/optuna.db",
                                directions=["maximize", "minimize"])
    for params in points:
        study.enqueue_trial(params)
