"""What a run needs besides its hyperparameters, built once and shareable across trials.

A search builds these once in the driver and hands them to every trial through Ray's object store
as numpy arrays (zero-copy on a node); a single `vlpuda train` builds them in-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlpuda.config import DEMO_MODEL, TrainConfig
from vlpuda.trainables.decoded import DecodedDomain, decode_domain
from vlpuda.trainables.lists import check_same_classes, list_imagefolder, read_image_list
from vlpuda.trainables.models import LoadedClip, load_clip
from vlpuda.trainables.partial import align_target
from vlpuda.trainables.student import text_prototypes
from vlpuda.trainables.unlabeled import list_unlabeled_folder, read_path_list, without


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
    target_holdout: DecodedDomain | None = None  # labelled target images, measurement only


def resolve_demo(cfg: TrainConfig) -> TrainConfig:
    """Point the demo preset at its cached digit domains and teacher, building them on first use."""
    if cfg.benchmark != "demo" or (cfg.data_dir is not None and cfg.model != DEMO_MODEL):
        return cfg
    from vlpuda.trainables.demo import prepare_demo

    demo = prepare_demo()
    update = {}
    if cfg.data_dir is None and cfg.unlabeled_target:
        from vlpuda.trainables.demo_unlabeled import unlabeled_demo_dir

        update["data_dir"] = str(unlabeled_demo_dir(demo.data_dir))
    elif cfg.data_dir is None:
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


def _decode(cfg: TrainConfig, name: str, classes: list[str], samples, labelled: bool = True
            ) -> DecodedDomain:
    return decode_domain(name, classes, samples, cfg.train_resize, cfg.image_size,
                         cache_dir=image_cache_dir(cfg), labelled=labelled)


def load_unlabeled_target(cfg: TrainConfig, classes: list[str]) -> DecodedDomain:
    """The target as unlabeled images (a folder at any depth, or a path-only list), without the
    measurement hold-out's images: those never train."""
    assert cfg.data_dir is not None and cfg.tgt is not None
    root = Path(cfg.data_dir).expanduser()
    if cfg.tgt in cfg.image_lists:
        samples = read_path_list(root / cfg.image_lists[cfg.tgt], root)
    else:
        samples = list_unlabeled_folder(root / cfg.tgt)
    if cfg.target_holdout_list is not None:
        samples = without(samples, read_image_list(root / cfg.target_holdout_list, root,
                                                   classes)[1])
    return _decode(cfg, cfg.tgt, classes, samples, labelled=False)


def load_target_holdout(cfg: TrainConfig, classes: list[str]) -> DecodedDomain | None:
    """target_holdout_list as a labelled domain, in the source's class order."""
    if cfg.target_holdout_list is None:
        return None
    assert cfg.data_dir is not None
    root = Path(cfg.data_dir).expanduser()
    _, samples = read_image_list(root / cfg.target_holdout_list, root, classes)
    return _decode(cfg, f"{cfg.tgt}-holdout", classes, samples)


def source_split(n: int, share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Source indices to train on and the held-out `share` (proxy_source_acc), one fixed split
    for every trial; share 0 trains on everything, as the paper does."""
    held = int(round(n * share))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[held:]), np.sort(order[:held])


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
    if cfg.unlabeled_target:
        # Classes and their order come from the source (or `classes:`, which must agree).
        if cfg.classes is not None:
            check_same_classes(source.name, source.classes, "classes:", cfg.classes)
        target = load_unlabeled_target(cfg, source.classes)
    else:
        # Same classes, or (pda) a subset of the source's, re-indexed into its order.
        target = align_target(cfg.pda, source.name, source.classes, load_domain(cfg, cfg.tgt))
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
        target_holdout=load_target_holdout(cfg, source.classes),
    )
