"""Domain datasets: listing, one-time decoding into uint8 arrays, sampling and batch views.

A trial never opens image files while it trains. Each domain is decoded once into two uint8
arrays (the squashed train-size and test-size versions, method.md section 6 and 9.11), which the
driver puts in Ray's object store so every worker reads them without a copy. All augmentation then
runs on whole batches of those arrays, on whatever device the batch lives on, with randomness drawn
from an explicit `torch.Generator` so that a trial is reproducible and resumable from its seed and
sampler state alone.

Listing follows torchvision's `ImageFolder` exactly (class order is label order, and the text
prompts are built in that order: method.md section 9.1), or reads Office-31/TLlib image lists.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS as _TORCHVISION_IMG_EXTENSIONS

from vlpuda.errors import DataError
from vlpuda.trainables.lists import check_folder_labels

# Imported rather than copied so a folder lists exactly the files ImageFolder would load.
IMG_EXTENSIONS: tuple[str, ...] = tuple(_TORCHVISION_IMG_EXTENSIONS)

# Bumped whenever the decoded layout or resize recipe changes, so stale caches are not reused.
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class Sample:
    """One labelled image file."""

    path: Path
    label: int


# ---------------------------------------------------------------------------------------------
# Listing domains
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Decoding (once per domain, optionally cached on disk)
# ---------------------------------------------------------------------------------------------


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
            # Squash to (s, s): the paper's Resize((256, 256)) ignores aspect (method.md 9.11).
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


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


class InfiniteSampler:
    """Endless random batches without replacement, reshuffled every pass, last partial dropped.

    Every rank derives the same permutation from (seed, pass) and takes its own stride of it, so
    DDP ranks see disjoint images; the state is two ints because the permutation is re-derived.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        name: str = "the domain",
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must lie in [0, {world_size})")
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        # Equal shard sizes on every rank keep the ranks' pass boundaries (and steps) in step.
        self.per_rank = n // world_size
        if self.per_rank < batch_size:
            raise DataError(
                f"{name} has {n} images ({self.per_rank} per worker over {world_size} workers), "
                f"fewer than the batch size {batch_size} per worker; lower the batch size or "
                "the number of workers"
            )
        self.batches_per_pass = self.per_rank // batch_size
        self._pass = 0
        self._position = 0
        self._shard = self._shard_for(0)

    def _shard_for(self, pass_index: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, pass_index]).permutation(self.n)
        return perm[self.rank :: self.world_size][: self.per_rank].astype(np.int64)

    def next_batch(self) -> np.ndarray:
        if self._position == self.batches_per_pass:
            self._pass += 1
            self._position = 0
            self._shard = self._shard_for(self._pass)
        start = self._position * self.batch_size
        self._position += 1
        return self._shard[start : start + self.batch_size].copy()

    def state_dict(self) -> dict[str, int]:
        return {"pass": self._pass, "position": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        position = int(state["position"])
        if not 0 <= position <= self.batches_per_pass:
            raise ValueError(
                f"sampler position {position} is outside [0, {self.batches_per_pass}]; the "
                "state comes from a sampler with a different size or batch size"
            )
        self._pass, self._position = int(state["pass"]), position
        self._shard = self._shard_for(self._pass)


# ---------------------------------------------------------------------------------------------
# Batch views (tensors in, tensors out; randomness only from the given generator)
#
# Views stay uint8 and channels-last (B, H, W, 3) until `model_input`, which converts, scales
# and normalises in one pass: a float batch is four times the bytes, and on a CPU node every
# extra pass over it costs as much as the crop itself. A GPU node gathers the uint8 batch, moves
# it and runs `train_views` + `model_input` there; a CPU node runs `cached_train_input`, which
# does both per image straight from the decoded array.
# ---------------------------------------------------------------------------------------------


def _crop_draws(b: int, padded_size: int, crop: int, hflip: bool, generator: torch.Generator
                ) -> list[tuple[int, int, bool]]:
    """Each image's window corner (top, left) in the padded image, and whether to flip it.

    Drawn on the CPU whatever the device, in the same order by both view paths below: the same
    generator state gives the same views on any device and either path."""
    if padded_size < crop:
        raise ValueError(f"crop {crop} exceeds the padded image size {padded_size}")
    offsets = torch.randint(0, padded_size - crop + 1, (b, 2), generator=generator).tolist()
    flips = (torch.rand(b, generator=generator) < 0.5).tolist()
    return [(top, left, hflip and flip) for (top, left), flip in zip(offsets, flips)]


def train_views(
    images: torch.Tensor, crop: int, pad: int, hflip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Zero-pad, random-crop and optionally flip each image: uint8 (B, S, S, 3) -> uint8
    (B, crop, crop, 3), on the images' device."""
    b, s = images.shape[0], images.shape[1]
    draws = _crop_draws(b, s + 2 * pad, crop, hflip, generator)
    if pad:
        padded = images.new_zeros((b, s + 2 * pad, s + 2 * pad, images.shape[3]))
        padded[:, pad : pad + s, pad : pad + s] = images
    else:
        padded = images
    # A slice per image is a view; one stack copies them all. (A batched gather with index
    # tensors does the same work several times slower on a CPU.)
    windows = []
    for i, (top, left, flip) in enumerate(draws):
        window = padded[i, top : top + crop, left : left + crop]
        windows.append(window.flip(1) if flip else window)
    return torch.stack(windows)


def _padded_window(image: np.ndarray, top: int, left: int, crop: int, pad: int) -> torch.Tensor:
    """The uint8 (crop, crop, 3) window at (top, left) of `image` (S, S, 3) zero-padded by `pad`
    on every side; a view of the array when there is no padding."""
    if not pad:
        return torch.from_numpy(image[top : top + crop, left : left + crop])
    s = image.shape[0]
    window = torch.zeros((crop, crop, 3), dtype=torch.uint8)
    # Window row r is image row top + r - pad: keep the rows and columns that fall on the image.
    r0, r1 = max(0, pad - top), min(crop, s + pad - top)
    c0, c1 = max(0, pad - left), min(crop, s + pad - left)
    window[r0:r1, c0:c1] = torch.from_numpy(
        image[top - pad + r0 : top - pad + r1, left - pad + c0 : left - pad + c1])
    return window


# Float bytes of windows converted together by `cached_train_input`: about a core's L2 cache.
CHUNK_BYTES = 1 << 20

# `_padded_window` wraps windows of read-only arrays (a memory map, Ray's object store) without a
# copy, and they are only ever read: torch's warning about writing to them does not apply. Set
# once here, for this module only (a per-call warnings.catch_warnings is not thread-safe).
warnings.filterwarnings("ignore", message="The given NumPy array is not writable",
                        category=UserWarning, module=__name__)


def cached_train_input(
    images: np.ndarray, index: np.ndarray, crop: int, pad: int, hflip: bool,
    generator: torch.Generator, mean: Sequence[float], std: Sequence[float],
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """`model_input(train_views(images[index], ...))` on the CPU, read straight from the decoded
    arrays: the same values and the same generator draws, without the intermediate batches.

    On a CPU-only node the batch path is bound by memory bandwidth: it gathers whole images,
    stacks their windows and converts the stack, three passes over batches that do not fit in
    the CPU's caches. Here the windows are read from the (memory-mapped) array a few at a time,
    as many as fill CHUNK_BYTES as floats (one 224 px window; dozens of small ones, which share
    the per-operation overhead), converted and normalised while still in cache, and written once
    into the float batch.
    """
    b, s = len(index), images.shape[1]
    draws = _crop_draws(b, s + 2 * pad, crop, hflip, generator)
    scale, shift = _scale_and_shift(tuple(mean), tuple(std), torch.device("cpu"))
    out = torch.empty((b, 3, crop, crop), memory_format=memory_format)
    out_hwc = out.permute(0, 2, 3, 1)  # the layout of the windows, over out's memory
    per_chunk = max(1, CHUNK_BYTES // (crop * crop * 3 * 4))
    for start in range(0, b, per_chunk):
        windows = []
        for image_index, (top, left, flip) in zip(index[start : start + per_chunk],
                                                  draws[start : start + per_chunk]):
            window = _padded_window(images[image_index], top, left, crop, pad)
            windows.append(window.flip(1) if flip else window)
        # One window (a large image) goes as is; several are stacked into one operation.
        chunk, target = ((windows[0], out_hwc[start]) if len(windows) == 1 else
                         (torch.stack(windows), out_hwc[start : start + len(windows)]))
        # (x / 255 - mean) / std as one multiply-add per element, as model_input does.
        torch.addcmul(shift, chunk.float(), scale, out=target)
    return out


@functools.lru_cache(maxsize=8)
def _scale_and_shift(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """1 / (255 std) and -mean / std on the device, made once (a copy to a GPU waits for it)."""
    scale = torch.tensor([1.0 / (255.0 * sd) for sd in std], device=device)
    shift = torch.tensor([-m / sd for m, sd in zip(mean, std)], device=device)
    return scale, shift


def model_input(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W): (x / 255 - mean) / std as one
    multiply-add per element, written into the layout the model wants (torch.channels_last for
    a channels-last ResNet)."""
    b, h, w, c = images.shape
    scale, shift = _scale_and_shift(tuple(mean), tuple(std), images.device)
    out = torch.empty((b, c, h, w), device=images.device, memory_format=memory_format)
    out.copy_(images.permute(0, 3, 1, 2))  # uint8 -> float, straight into the output layout
    # In place: a mixed uint8/float multiply-add would first cast into a temporary batch.
    return torch.addcmul(shift.view(1, c, 1, 1), out, scale.view(1, c, 1, 1), out=out)
