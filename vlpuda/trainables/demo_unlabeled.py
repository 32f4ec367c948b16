"""The demo's digit domains as an unlabeled-target task (configs/demo_unlabeled.yaml).

Under `<demo data>/../unlabeled`: MNIST stays the labelled source (a link to its ImageFolder);
MNIST-M and Printed become flat folders of images under shuffled names, so neither folders nor
file order say a label; and `<Domain>_holdout.txt` lists a tenth of each target's images with
their labels, the measurement-only `target_holdout_list` (vlpuda never trains on those).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from vlpuda.trainables.lists import list_imagefolder

SOURCE = "MNIST"
TARGETS = ("MNIST-M", "Printed")
HOLDOUT_SHARE = 0.1
SEED = 0


def _flatten(labelled: Path, out: Path, holdout_list: Path, rng: np.random.Generator) -> None:
    classes, samples = list_imagefolder(labelled)
    order = rng.permutation(len(samples))
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    held = set(order[: int(len(samples) * HOLDOUT_SHARE)].tolist())
    lines = []
    for position, index in enumerate(order):
        name = f"{position:05d}.png"
        shutil.copyfile(samples[index].path, staging / name)
        if index in held:
            lines.append(f"{out.name}/{name} {samples[index].label}")
    holdout_list.write_text("\n".join(sorted(lines)) + "\n")
    staging.rename(out)


def unlabeled_demo_dir(data_dir: Path) -> Path:
    """The unlabeled variant of the demo data in `data_dir`, built once beside it."""
    root = Path(data_dir).parent / "unlabeled"
    root.mkdir(parents=True, exist_ok=True)
    if not (root / SOURCE).exists():
        os.symlink(Path(data_dir) / SOURCE, root / SOURCE)
    rng = np.random.default_rng(SEED)
    for domain in TARGETS:
        if not (root / domain).is_dir():
            _flatten(Path(data_dir) / domain, root / domain, root / f"{domain}_holdout.txt", rng)
    return root
