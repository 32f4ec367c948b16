"""Listing a domain's images: ImageFolder trees, Office-31/TLlib image lists, class checks.

Listing follows torchvision's `ImageFolder` exactly (class order is label order, and the text
prompts are built in that order: docs/method.md#prompts-and-class-order), or reads
Office-31/TLlib image lists.

Lists whose class names come from folders (Office-31 style) are checked label by label: each
label is named after the folder its images sit in, so every image of one folder must carry the
same label. A line whose label disagrees with the rest of its folder is a typo in the list; left
alone it would surface much later as two domains whose classes seem to be "in another order".
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS as _TORCHVISION_IMG_EXTENSIONS

from vlpuda.errors import DataError

# Imported rather than copied so a folder lists exactly the files ImageFolder would load.
IMG_EXTENSIONS: tuple[str, ...] = tuple(_TORCHVISION_IMG_EXTENSIONS)


@dataclass(frozen=True)
class Sample:
    """One labelled image file."""

    path: Path
    label: int


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def list_imagefolder(root: Path) -> tuple[list[str], list[Sample]]:
    """List a `root/<class>/**/<image>` tree in torchvision ImageFolder's class and file order."""
    root = Path(root)
    classes = list_class_folders(root)
    samples: list[Sample] = []
    for label, name in enumerate(classes):
        found = _images_under(root / name)
        if not found:
            raise DataError(
                f"class folder {root / name} has no images (extensions: "
                f"{', '.join(IMG_EXTENSIONS)}); add images or remove the folder"
            )
        samples.extend(Sample(path, label) for path in found)
    return classes, samples


def list_class_folders(root: Path) -> list[str]:
    """The class folders of an ImageFolder domain, in label order (nothing else is read)."""
    if not root.is_dir():
        raise DataError(
            f"domain folder {root} does not exist or is not a directory; "
            "check the data root and domain name in the config"
        )
    # Case-sensitive sort, as ImageFolder.find_classes does: 'TV' < 'Table', 'The_Eiffel_Tower'
    # before every lowercase name. Label i is classes[i]; prompts must follow this order.
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        flat = any(_is_image(entry.name) for entry in os.scandir(root))
        raise DataError(
            f"domain folder {root} has no class subfolders; "
            "expected one subfolder of images per class (ImageFolder layout)"
            + ("; its images have no labels: if it is the target, pass --unlabeled-target "
               "(unlabeled_target: true)" if flat else "")
        )
    return classes


def _images_under(class_dir: Path) -> list[Path]:
    # Same walk as torchvision's make_dataset: recursive, following links, sorted dirs and files.
    found: list[Path] = []
    for dirpath, _dirnames, filenames in sorted(os.walk(class_dir, followlinks=True)):
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(f))
    return found


def _parse_list_line(line: str, list_file: Path, lineno: int) -> tuple[str, int]:
    # rsplit: the label is the last field, so paths containing spaces still parse.
    parts = line.rsplit(maxsplit=1)
    if len(parts) != 2:
        raise DataError(
            f"{list_file}:{lineno}: expected '<relative/path/to/image> <integer label>', "
            f"got {line!r}; fix the line"
        )
    rel, label_text = parts
    try:
        label = int(label_text)
    except ValueError:
        raise DataError(
            f"{list_file}:{lineno}: label {label_text!r} is not an integer; "
            "each line must be '<relative/path/to/image> <integer label>'"
        ) from None
    if label < 0:
        raise DataError(f"{list_file}:{lineno}: label {label} is negative; labels start at 0")
    return rel, label


def _classes_from_dirs(list_file: Path, samples: list[Sample]) -> list[str]:
    # A label's name is the folder its images sit in (Office-31: amazon/images/back_pack/x.jpg).
    names: dict[int, str] = {}
    for s in samples:
        name = s.path.parent.name
        seen = names.setdefault(s.label, name)
        if seen != name:
            raise DataError(
                f"{list_file}: label {s.label} is used for images in folders {seen!r} and "
                f"{name!r}, so class names cannot be derived from folders; list the class "
                "names in label order under `classes:` in the config"
            )
    missing = sorted(set(range(max(names) + 1)) - set(names))
    if missing:
        raise DataError(
            f"{list_file}: labels must run 0..{max(names)} without gaps, but no image has "
            f"label(s) {missing}; fix the list or give `classes:` in the config"
        )
    return [names[i] for i in range(len(names))]


def read_image_list(
    list_file: Path, root: Path, classes: list[str] | None = None
) -> tuple[list[str], list[Sample]]:
    """Read an Office-31/TLlib list: one '<path relative to root> <label>' per line.

    Without `classes`, each label is named after the folder its images sit in and labels must
    run 0..C-1; with `classes`, labels only have to index into it (a list may skip classes).
    """
    list_file, root = Path(list_file), Path(root)
    if not list_file.is_file():
        raise DataError(f"image list {list_file} does not exist; check the path in the config")
    samples: list[Sample] = []
    linenos: list[int] = []
    with open(list_file, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            rel, label = _parse_list_line(line, list_file, lineno)
            if classes is not None and label >= len(classes):
                raise DataError(
                    f"{list_file}:{lineno}: label {label} but only {len(classes)} classes are "
                    "given in the config; fix the label or the `classes:` list"
                )
            samples.append(Sample(root / rel, label))
            linenos.append(lineno)
    if not samples:
        raise DataError(f"image list {list_file} has no entries; it must list the domain's images")
    missing = [s.path for s in samples if not s.path.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise DataError(
            f"{len(missing)} image(s) listed in {list_file} do not exist under {root} "
            f"(e.g. {shown}); check the data root the list's paths are relative to"
        )
    if classes is None:  # labels are named after folders: each folder must have one label
        check_folder_labels(list_file, [(s.path.parent.name, s.label) for s in samples], linenos)
    names = list(classes) if classes is not None else _classes_from_dirs(list_file, samples)
    return names, samples


def check_same_classes(
    src_name: str, src_classes: list[str], tgt_name: str, tgt_classes: list[str]
) -> None:
    """Fail unless both domains have the same classes in the same (label) order."""
    if list(src_classes) == list(tgt_classes):
        return
    only_src = sorted(set(src_classes) - set(tgt_classes))
    only_tgt = sorted(set(tgt_classes) - set(src_classes))
    if not only_src and not only_tgt:
        detail = "same classes, different order (labels would not match)"
    else:
        detail = "; ".join(
            part
            for part in (
                f"only in {src_name}: {only_src}" if only_src else "",
                f"only in {tgt_name}: {only_tgt}" if only_tgt else "",
            )
            if part
        )
    raise DataError(
        f"source {src_name!r} and target {tgt_name!r} have different class lists: {detail}; "
        "fix the folders or image lists so both domains use identical class names"
    )


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
