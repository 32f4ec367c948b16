"""The search's shared assets: each task's decoded images and text prototypes, built once before
Ray starts and put in the object store, so every trial gets references instead of data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vlpuda.config import TrainConfig
from vlpuda.search.cluster import Log, say
from vlpuda.search.plan import SearchPlan

LOCAL_DIR = "local-dir:"  # open_clip's prefix for a model folder


def build_assets(plan: SearchPlan, log: Log = say) -> tuple[tuple[dict[str, Any], ...], list]:
    """Each task's assets, built once for the whole search (decoded images, text prototypes).
    Returns the resolved task configs (the demo's paths filled in) and the assets.

    Runs before Ray starts, so a first demo run's teacher pre-training has the machine to itself.
    """
    from vlpuda.trainables.assets import build_task_assets, resolve_demo

    tasks, built = [], []
    for cfg in plan.tasks:
        started = time.monotonic()
        resolved = resolve_demo(cfg)
        assets = build_task_assets(resolved)
        size = sum(a.nbytes for d in (assets.source, assets.target)
                   for a in (d.train_images, d.test_images, d.labels))
        log(f"shared assets for {cfg.src} -> {cfg.tgt}: {len(assets.source)} + "
            f"{len(assets.target)} images, {len(assets.classes)} classes, {size / 2**20:.1f} MiB "
            f"({time.monotonic() - started:.0f} s)")
        tasks.append(absolute_paths(resolved).model_dump())
        built.append(assets)
    return tuple(tasks), built


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with its file paths made absolute: Ray Train runs workers in a directory of its own
    (and, on a cluster, on other machines), where a relative path means something else."""
    def absolute(value: str | None) -> str | None:
        if value is None or "://" in value:
            return value
        path = Path(value).expanduser()
        return str(path.resolve()) if path.exists() else value

    update = {key: absolute(getattr(cfg, key))
              for key in ("data_dir", "cache_dir", "image_cache_dir", "pretrained")}
    if cfg.model.startswith(LOCAL_DIR):
        update["model"] = LOCAL_DIR + str(absolute(cfg.model.removeprefix(LOCAL_DIR)))
    return cfg.model_copy(update=update)


def share(assets: list) -> list:
    """Put each task's assets in the object store once; trials get references (numpy arrays are
    read zero-copy by every worker on a node)."""
    import ray

    return [ray.put(a) for a in assets]
