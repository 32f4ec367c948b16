"""A check of image lists whose class names come from folders (Office-31 style lists).

Each label is named after the folder its images sit in, so every image of one folder must carry
the same label. A line whose label disagrees with the rest of its folder is a typo in the list;
left alone it would surface much later as two domains whose classes seem to be "in another order".
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from vlpuda.errors import DataError


def check_folder_labels(list_file: Path, entries: list[tuple[str, int]],
                        linenos: list[int]) -> None:
    """`entries` are (folder name, label) per listed image, `linenos` their lines in the file.
    Fails at the first line whose label differs from the label most of its folder carries."""
    by_folder: dict[str, Counter[int]] = {}
    for folder, label in entries:
        by_folder.setdefault(folder, Counter())[label] += 1
    usual = {folder: counts.most_common(1)[0][0] for folder, counts in by_folder.items()}
    for (folder, label), lineno in zip(entries, linenos):
        if label != usual[folder]:
            raise DataError(
                f"{list_file}:{lineno}: label {label} on an image in folder {folder!r}, whose "
                f"other images have label {usual[folder]}: the label disagrees with its folder; "
                "fix the line (or list the class names under `classes:` in the config)")
