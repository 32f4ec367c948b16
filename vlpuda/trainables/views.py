"""Training views of decoded images: tensors in, tensors out; randomness only from the given
generator.

All augmentation runs on whole batches of the decoded arrays, on whatever device the batch lives
on, with randomness drawn from an explicit `torch.Generator` so that a trial is reproducible and
resumable from its seed and sampler state alone.

Views stay uint8 and channels-last (B, H, W, 3) until `model_input`, which converts, scales and
normalises in one pass: a float batch is four times the bytes, and on a CPU node every extra pass
over it costs as much as the crop itself. A GPU node gathers the uint8 batch, moves it and runs
`train_views` + `model_input` there; a CPU node runs `cached_train_input`, which does both per
image straight from the decoded array.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import numpy as np
import torch


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
