"""What `vlpuda validate` checks beyond types and paths: the model name and the two domains'
classes, from names and folder listings only (nothing is decoded, no weights are read)."""

from __future__ import annotations

from pathlib import Path

from vlpuda.config import DEMO_MODEL, TrainConfig
from vlpuda.errors import VlpudaError

LOCAL_DIR_FILES = ("open_clip_config.json",)


def model_problems(cfg: TrainConfig) -> list[str]:
    """An unknown architecture, or a local-dir: folder without its config."""
    from vlpuda.trainables.models import LOCAL_DIR_PREFIX, _check_architecture, _schema

    if cfg.benchmark == "demo" and cfg.model == DEMO_MODEL:
        return []  # the demo's teacher is built on first use (trainables/demo.py)
    schema = _schema(cfg.model)
    if schema == "local-dir":
        folder = Path(cfg.model[len(LOCAL_DIR_PREFIX):]).expanduser()
        missing = [name for name in LOCAL_DIR_FILES if not (folder / name).is_file()]
        if missing:
            return [f"model: {folder} lacks {', '.join(missing)} (a {LOCAL_DIR_PREFIX} folder "
                    "holds open_clip_config.json and open_clip_model.safetensors)"]
        return []
    if schema is None:
        try:
            _check_architecture(cfg.model)
        except VlpudaError as err:
            return [f"model: {err}"]
    return []


def domain_classes(cfg: TrainConfig, domain: str) -> list[str]:
    """A domain's class names in label order: its class folders, or its image list's labels
    named after the folders their images sit in (each listed file is checked to exist)."""
    from vlpuda.trainables.lists import list_class_folders, read_image_list

    root = Path(cfg.data_dir or ".").expanduser()
    if domain in cfg.image_lists:
        return read_image_list(root / cfg.image_lists[domain], root, cfg.classes)[0]
    return list_class_folders(root / domain)


def class_problems(cfg: TrainConfig) -> list[str]:
    """Source and target must have the same classes in the same order (as training checks)."""
    from vlpuda.trainables.lists import check_same_classes

    if cfg.src is None or cfg.tgt is None or cfg.data_dir is None:
        return []
    try:
        check_same_classes(cfg.src, domain_classes(cfg, cfg.src),
                           cfg.tgt, domain_classes(cfg, cfg.tgt))
    except VlpudaError as err:
        return [f"src/tgt: {err}"]
    return []
