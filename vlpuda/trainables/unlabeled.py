"""Unlabeled target domains: a folder of images (flat, or nested in folders that are not classes)
or an image list with paths only. The class names come from the source (or `classes:`).

Samples of an unlabeled domain carry the label -1: nothing may read it as a class.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlpuda.errors import DataError
from vlpuda.trainables.lists import IMG_EXTENSIONS, Sample

UNLABELED = -1


def list_unlabeled_folder(root: Path) -> list[Sample]:
    """Every image under `root`, at any depth (sub-folders are not classes), in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"target folder {root} does not exist or is not a directory; check the "
                        "data root and domain name in the config")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        found.extend(Path(dirpath) / f for f in sorted(filenames)
                     if f.lower().endswith(IMG_EXTENSIONS))
    if not found:
        raise DataError(f"target folder {root} has no images (extensions: "
                        f"{', '.join(IMG_EXTENSIONS)}); point tgt at the folder of target images")
    return [Sample(path, UNLABELED) for path in sorted(found)]


def _listed_path(line: str, root: Path) -> Path:
    """A list line's image: the whole line, or, when that is no file and the line ends with an
    integer (a labelled list given as unlabeled), everything before it; the label is ignored."""
    whole = root / line
    parts = line.rsplit(maxsplit=1)
    if not whole.is_file() and len(parts) == 2 and parts[1].lstrip("-").isdigit():
        return root / parts[0]
    return whole


def read_path_list(list_file: Path, root: Path) -> list[Sample]:
    """An image list of '<path relative to root>' lines ('<path> <label>' lines keep their paths
    and drop their labels)."""
    list_file, root = Path(list_file), Path(root)
    if not list_file.is_file():
        raise DataError(f"image list {list_file} does not exist; check the path in the config")
    with open(list_file, encoding="utf-8") as handle:
        lines = [raw.strip() for raw in handle]
    samples = [Sample(_listed_path(line, root), UNLABELED) for line in lines if line]
    if not samples:
        raise DataError(f"image list {list_file} has no entries; it must list the target images")
    missing = [s.path for s in samples if not s.path.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise DataError(f"{len(missing)} image(s) listed in {list_file} do not exist under "
                        f"{root} (e.g. {shown}); check the data root the list is relative to")
    return samples


def without(samples: list[Sample], excluded: list[Sample]) -> list[Sample]:
    """`samples` minus the images of `excluded` (a measurement-only hold-out never trains)."""
    drop = {os.path.abspath(s.path) for s in excluded}
    return [s for s in samples if os.path.abspath(s.path) not in drop]
