"""Domains decoded once into uint8 arrays, optionally through a disk cache.

A trial never opens image files while it trains. Each domain is decoded once into two uint8
arrays (the squashed train-size and test-size versions, docs/method.md#decoding-and-resizing),
which the driver puts in Ray's object store so every worker reads them without a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vlpuda.errors import DataError
from vlpuda.trainables.lists import Sample

# Bumped whenever the decoded layout or resize recipe changes, so stale caches are not reused.
_CACHE_FORMAT = 1


@dataclass
class DecodedDomain:
    """A domain decoded to uint8 HWC arrays; `test_images` may be the same array as train."""

    name: str
    classes: list[str]
    labels: np.ndarray  # int64 (N,)
    train_images: np.ndarray  # uint8 (N, S, S, 3)
    test_images: np.ndarray  # uint8 (N, T, T, 3)
    labelled: bool = True  # False: an unlabeled target, whose `labels` are placeholders (-1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def decoded_from_arrays(
    name: str,
    classes: list[str],
    labels: np.ndarray,
    train_images: np.ndarray,
    test_images: np.ndarray,
    labelled: bool = True,
) -> DecodedDomain:
    """Build a DecodedDomain from arrays, checking the shapes and dtypes the loop relies on."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: labels must be a 1-D integer array, got {labels.dtype}")
    n = labels.shape[0]
    for field, arr in (("train_images", train_images), ("test_images", test_images)):
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
            raise ValueError(f"{name}: {field} must be uint8 (N, H, W, 3), got {arr.dtype} "
                             f"{arr.shape}")
        if arr.shape[0] != n or arr.shape[1] != arr.shape[2]:
            raise ValueError(f"{name}: {field} must be ({n}, S, S, 3), got {arr.shape}")
    if labelled and n and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"{name}: labels must lie in [0, {len(classes)})")
    return DecodedDomain(name, list(classes), labels.astype(np.int64, copy=False),
                         train_images, test_images, labelled)


def _decode_file(path: Path, sizes: Sequence[int]) -> list[np.ndarray]:
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")  # forces a full decode, so truncated files fail here
            # Squash to (s, s): the paper's Resize((256, 256)) ignores aspect
            # (docs/method.md#decoding-and-resizing).
            return [np.asarray(rgb.resize((s, s), Image.Resampling.BILINEAR)) for s in sizes]
    # Pillow signals broken files with several unrelated exception types (OSError, SyntaxError,
    # ValueError, DecompressionBombError); any of them means "this file cannot be used".
    except Exception as exc:  # noqa: BLE001
        raise DataError(
            f"cannot read image {path} ({type(exc).__name__}: {exc}); "
            "remove or replace the file (and drop it from the image list, if any)"
        ) from exc


def _decode_into(
    samples: list[Sample], outputs: list[np.ndarray], sizes: list[int], num_threads: int
) -> None:
    def work(i: int) -> None:
        for out, img in zip(outputs, _decode_file(samples[i].path, sizes)):
            out[i] = img

    # Pillow releases the GIL while decoding and resizing, so threads scale without copies.
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        for _ in pool.map(work, range(len(samples))):
            pass


def _cache_key(
    classes: list[str], samples: list[Sample], train_resize: int, image_size: int
) -> str:
    # Keyed on the listed order (arrays are stored in that order) and on each file's size and
    # mtime, so an edited or replaced image invalidates the cache without hashing pixels.
    h = hashlib.sha256()
    h.update(json.dumps([_CACHE_FORMAT, train_resize, image_size, list(classes)]).encode())
    for s in samples:
        try:
            st = os.stat(s.path)
        except OSError as exc:
            raise DataError(f"cannot read image {s.path} ({exc}); check that it exists") from exc
        entry = (os.path.abspath(s.path), s.label, st.st_size, st.st_mtime_ns)
        h.update(("\n" + "\t".join(map(str, entry))).encode())
    return h.hexdigest()


def _load_cached(entry: Path, n: int, sizes: list[int]) -> list[np.ndarray]:
    arrays = []
    for size in sizes:
        path = entry / f"images_{size}.npy"
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if arr.shape != (n, size, size, 3) or arr.dtype != np.uint8:
            raise DataError(
                f"decoded-image cache {path} has shape {arr.shape}, expected "
                f"{(n, size, size, 3)}; delete the folder {entry} and run again"
            )
        # A plain ndarray view of the memmap, not the memmap itself: np.memmap pickles its bytes
        # in-band, whereas an ndarray pickles (protocol 5) as an out-of-band buffer, which Ray's
        # object store then shares zero-copy between workers. Pages still load lazily.
        arrays.append(np.asarray(arr))
    return arrays


def _decode_to_cache(
    entry: Path, samples: list[Sample], sizes: list[int], num_threads: int
) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name[:16]}-", dir=entry.parent))
    try:
        # Decode straight into .npy memmaps: a large domain never has to fit in RAM twice.
        outputs = [
            np.lib.format.open_memmap(
                tmp / f"images_{s}.npy", mode="w+", dtype=np.uint8,
                shape=(len(samples), s, s, 3),
            )
            for s in sizes
        ]
        _decode_into(samples, outputs, sizes, num_threads)
        for out in outputs:
            out.flush()
        del outputs
        # The rename is atomic: other processes see either no entry or a complete one.
        try:
            os.replace(tmp, entry)
        except OSError:
            if not entry.is_dir():
                raise
            # Another process finished the same entry first; its arrays are identical.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def decode_domain(
    name: str,
    classes: list[str],
    samples: list[Sample],
    train_resize: int,
    image_size: int,
    cache_dir: Path | None = None,
    num_threads: int = 4,
    labelled: bool = True,
) -> DecodedDomain:
    """Decode every image once to (S, S) and (T, T) uint8 arrays, reusing a disk cache if given."""
    if not samples:
        raise DataError(f"domain {name!r} has no images")
    # Test images come from the original file at T, not from the S version, as in the paper's
    # separate test transform; one array serves both when the sizes agree.
    sizes = [train_resize] if train_resize == image_size else [train_resize, image_size]
    labels = np.array([s.label for s in samples], dtype=np.int64)
    if cache_dir is None:
        arrays = [np.empty((len(samples), s, s, 3), dtype=np.uint8) for s in sizes]
        _decode_into(samples, arrays, sizes, num_threads)
    else:
        entry = Path(cache_dir) / _cache_key(classes, samples, train_resize, image_size)
        if not entry.is_dir():
            _decode_to_cache(entry, samples, sizes, num_threads)
        arrays = _load_cached(entry, len(samples), sizes)
    return decoded_from_arrays(name, classes, labels, arrays[0], arrays[-1], labelled)
