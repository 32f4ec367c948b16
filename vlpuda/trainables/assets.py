"""What a run needs besides its hyperparameters, built once and shareable across trials.

A search builds these once in the driver and hands them to every trial through Ray's object store
as numpy arrays (zero-copy on a node); a single `vlpuda train` builds them in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlpuda.config import DEMO_MODEL, TrainConfig
from vlpuda.trainables.data import (
    DecodedDomain,
    decode_domain,
    list_imagefolder,
    read_image_list,
)
from vlpuda.trainables.models import LoadedClip, load_clip, text_prototypes
from vlpuda.trainables.partial import align_target


@dataclass
class TaskAssets:
    """Decoded source and target images, the class list and the frozen zero-shot classifier."""

    classes: list[str]
    source: DecodedDomain
    target: DecodedDomain
    prototypes: np.ndarray  # (C, d) float32, L2-normalised text embeddings in class order
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    logit_scale: float  # the model's exp(logit_scale): 100 for OpenAI CLIP


def resolve_demo(cfg: TrainConfig) -> TrainConfig:
    """Point the demo preset at its cached digit domains and teacher, building them on first use."""
    if cfg.benchmark != "demo" or (cfg.data_dir is not None and cfg.model != DEMO_MODEL):
        return cfg
    from vlpuda.trainables.demo import prepare_demo

    demo = prepare_demo()
    update = {}
    if cfg.data_dir is None:
        update["data_dir"] = str(demo.data_dir)
    if cfg.model == DEMO_MODEL:
        update["model"] = f"local-dir:{demo.teacher_dir}"
        update["pretrained"] = None
    return cfg.model_copy(update=update)


def image_cache_dir(cfg: TrainConfig) -> Path:
    if cfg.image_cache_dir is not None:
        return Path(cfg.image_cache_dir).expanduser()
    from vlpuda.trainables.demo import default_cache_dir

    return default_cache_dir() / "images"


def load_domain(cfg: TrainConfig, domain: str) -> DecodedDomain:
    """One domain from an image list (if the preset names one) or an ImageFolder tree."""
    assert cfg.data_dir is not None
    root = Path(cfg.data_dir).expanduser()
    if domain in cfg.image_lists:
        classes, samples = read_image_list(root / cfg.image_lists[domain], root, cfg.classes)
    else:
        classes, samples = list_imagefolder(root / domain)
    return decode_domain(
        domain, classes, samples, cfg.train_resize, cfg.image_size, cache_dir=image_cache_dir(cfg)
    )


def build_task_assets(cfg: TrainConfig, loaded: LoadedClip | None = None) -> TaskAssets:
    """Decode both domains, check their classes agree (target within source with pda), and
    compute the text prototypes over the source's classes."""
    assert cfg.src is not None and cfg.tgt is not None
    source = load_domain(cfg, cfg.src)
    target = load_domain(cfg, cfg.tgt)
    target = align_target(cfg.pda, source.name, source.classes, target)
    if loaded is None:
        loaded = load_clip(cfg.model, cfg.pretrained, cfg.cache_dir)
    # Prompts are built from the dataset's own class order, so the zero-shot head and the labels
    # can never disagree about which index is which class.
    prototypes = text_prototypes(loaded, source.classes, cfg.prompt_template)
    return TaskAssets(
        classes=list(source.classes),
        source=source,
        target=target,
        prototypes=prototypes.numpy().astype(np.float32),
        mean=tuple(loaded.mean),
        std=tuple(loaded.std),
        logit_scale=float(loaded.logit_scale),
    )
