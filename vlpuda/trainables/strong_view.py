"""FixMatch's strong view, as the reference draws it (docs/method.md#fixmatch-strong-view).

Per target image: center crop of the squashed train-size image, horizontal flip with p = 0.5,
ColorJitter(0.4, 0.4, 0.4, hue 0), then RandAugment in timm's `rand-m10-n2-mstd0.5` form:

* two ops drawn uniformly, with replacement, from the 15 below;
* each drawn op is applied with probability 0.5;
* its magnitude is N(10, 0.5) clipped to [0, 10] (so about half the draws sit exactly at 10);
* signed ops (rotate, shear, translate) flip their sign with probability 0.5;
* geometric ops resample bilinearly or bicubically (chosen per op) and fill with the image mean
  of the model's normalisation (the CLIP mean, as uint8: 123, 117, 104).

The ops act on PIL images, as timm's do, so a fixed op and argument give timm's pixels exactly;
`tests/trainables/test_strong_view.py` checks the parameter distributions and the pixels against
timm itself. All randomness comes from one numpy Generator seeded by (seed, rank, iteration), so a
step's strong views depend on nothing else: they can be computed ahead, on another thread, and a
resumed run draws the same ones without any saved state.

PIL work is per image on the CPU (about 1-2 ms an image at 224 px, benchmarks/README.md), so
`StrongViewPrefetcher` computes the next step's batch on a background thread while the current
step trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

# timm's default RandAugment op set (`_RAND_TRANSFORMS`); the reference's copy is the same list.
OPS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
)
GEOMETRIC = frozenset({"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"})
SIGNED = GEOMETRIC  # the ops whose argument is negated half of the time
RESAMPLES = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)

MAX_MAGNITUDE = 10.0  # the 'M' scale's top: an argument at M = 10 is the op's full range
NUM_OPS, MAGNITUDE, MAGNITUDE_STD, OP_PROB = 2, 10.0, 0.5, 0.5  # rand-m10-n2-mstd0.5, p 0.5
JITTER = 0.4  # ColorJitter's brightness, contrast and saturation spread: factors in [0.6, 1.4]


@dataclass(frozen=True)
class OpDraw:
    """One drawn RandAugment op. `arg` is None for the argument-free ops; `resample` only for
    geometric ops; an op with applied=False leaves the image as it is."""

    name: str
    applied: bool
    magnitude: float = 0.0
    arg: float | int | None = None
    resample: int | None = None


def op_argument(name: str, magnitude: float) -> float | int | None:
    """The unsigned argument of op `name` at `magnitude` in [0, 10] (timm's level mapping)."""
    level = magnitude / MAX_MAGNITUDE
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return 30.0 * level  # degrees
    if name == "Posterize":
        return int(4 * level)  # bits kept: fewer bits at a smaller magnitude (timm's 'Posterize')
    if name == "Solarize":
        return min(256, int(256 * level))  # threshold: pixels at or above it are inverted
    if name == "SolarizeAdd":
        return min(128, int(110 * level))  # added to pixels below 128
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return 0.1 + 1.8 * level  # enhancement factor in [0.1, 1.9]
    if name in ("ShearX", "ShearY"):
        return 0.3 * level
    if name in ("TranslateXRel", "TranslateYRel"):
        return 0.45 * level  # fraction of the image size
    raise ValueError(f"unknown RandAugment op {name!r}")


def draw_ops(rng: np.random.Generator, num_ops: int = NUM_OPS, magnitude: float = MAGNITUDE,
             magnitude_std: float = MAGNITUDE_STD, prob: float = OP_PROB) -> list[OpDraw]:
    """Draw one image's RandAugment ops: which ops, whether each applies, and its arguments."""
    draws = []
    for name in rng.choice(OPS, size=num_ops, replace=True):
        name = str(name)
        if rng.random() >= prob:
            draws.append(OpDraw(name, applied=False))
            continue
        m = float(np.clip(rng.normal(magnitude, magnitude_std), 0.0, MAX_MAGNITUDE))
        arg = op_argument(name, m)
        if name in SIGNED and rng.random() < 0.5:
            arg = -arg  # type: ignore[operator]
        resample = RESAMPLES[int(rng.integers(2))] if name in GEOMETRIC else None
        draws.append(OpDraw(name, True, m, arg, resample))
    return draws


def _affine(img: Image.Image, coefficients: tuple[float, ...], resample: int,
            fill: tuple[int, ...]) -> Image.Image:
    # PIL's affine maps each output pixel (x, y) to the input (a x + b y + c, d x + e y + f).
    return img.transform(img.size, Image.Transform.AFFINE, coefficients, resample=resample,
                         fillcolor=fill)


def _solarize_add(img: Image.Image, add: int) -> Image.Image:
    table = [min(255, v + add) if v < 128 else v for v in range(256)]
    return img.point(table * len(img.getbands()))


def apply_op(img: Image.Image, draw: OpDraw, fill: tuple[int, ...]) -> Image.Image:
    """Apply one drawn op to an RGB image; `fill` colours the pixels a geometric op uncovers."""
    if not draw.applied:
        return img
    name, arg, resample = draw.name, draw.arg, draw.resample
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Posterize":
        return img if arg >= 8 else ImageOps.posterize(img, int(arg))  # type: ignore[operator]
    if name == "Solarize":
        return ImageOps.solarize(img, int(arg))  # type: ignore[arg-type]
    if name == "SolarizeAdd":
        return _solarize_add(img, int(arg))  # type: ignore[arg-type]
    enhancers = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
                 "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}
    if name in enhancers:
        return enhancers[name](img).enhance(float(arg))  # type: ignore[arg-type]
    assert resample is not None and arg is not None
    if name == "Rotate":
        return img.rotate(float(arg), resample=resample, fillcolor=fill)
    if name == "ShearX":
        return _affine(img, (1, arg, 0, 0, 1, 0), resample, fill)
    if name == "ShearY":
        return _affine(img, (1, 0, 0, arg, 1, 0), resample, fill)
    if name == "TranslateXRel":
        return _affine(img, (1, 0, arg * img.size[0], 0, 1, 0), resample, fill)
    if name == "TranslateYRel":
        return _affine(img, (1, 0, 0, 0, 1, arg * img.size[1]), resample, fill)
    raise ValueError(f"unknown RandAugment op {name!r}")


@dataclass(frozen=True)
class JitterDraw:
    """ColorJitter's draw: the order of the three adjustments and each one's factor."""

    order: tuple[str, ...]
    factors: dict[str, float]


JITTER_OPS = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
              "saturation": ImageEnhance.Color}  # torchvision's PIL ColorJitter uses these


def draw_jitter(rng: np.random.Generator, spread: float = JITTER) -> JitterDraw:
    # torchvision shuffles all four adjustments and skips hue (0 here): a uniform order of three.
    order = tuple(str(name) for name in rng.permutation(list(JITTER_OPS)))
    factors = {name: float(rng.uniform(1 - spread, 1 + spread)) for name in JITTER_OPS}
    return JitterDraw(order, factors)


def apply_jitter(img: Image.Image, draw: JitterDraw) -> Image.Image:
    for name in draw.order:
        img = JITTER_OPS[name](img).enhance(draw.factors[name])
    return img


def fill_colour(mean: Sequence[float]) -> tuple[int, ...]:
    """The model's normalisation mean as a uint8 colour (the reference's `img_mean`)."""
    return tuple(min(255, round(255 * m)) for m in mean)


def strong_view(image: np.ndarray, crop: int, fill: tuple[int, ...],
                rng: np.random.Generator) -> np.ndarray:
    """One uint8 (S, S, 3) image -> its uint8 (crop, crop, 3) strong view."""
    s = image.shape[0]
    if crop > s:
        raise ValueError(f"crop {crop} exceeds the image size {s}")
    top = int(round((s - crop) / 2.0))  # torchvision CenterCrop's rounding
    window = image[top : top + crop, top : top + crop]
    if rng.random() < 0.5:
        window = window[:, ::-1]
    img = apply_jitter(Image.fromarray(np.ascontiguousarray(window)), draw_jitter(rng))
    for draw in draw_ops(rng):
        img = apply_op(img, draw, fill)
    return np.asarray(img)


def strong_batch(images: np.ndarray, index: np.ndarray, crop: int, fill: tuple[int, ...],
                 rng: np.random.Generator) -> torch.Tensor:
    """Strong views of images[index]: uint8 (B, crop, crop, 3), drawn image by image from rng."""
    out = np.empty((len(index), crop, crop, 3), dtype=np.uint8)
    for row, i in enumerate(index):
        out[row] = strong_view(images[i], crop, fill, rng)
    return torch.from_numpy(out)


def step_rng(seed: int, rank: int, iteration: int) -> np.random.Generator:
    """The strong views' generator for one step: a function of the step alone."""
    return np.random.default_rng([seed, rank, iteration])


class StrongViewPrefetcher:
    """Draws the target batches and computes their strong views one step ahead, on a thread.

    `next(iteration, ahead)` returns this step's target indices and strong views, and (when
    `ahead`) already draws the next step's indices and starts its views, which then run while
    this step trains. Pass ahead=False on an epoch's last step: nothing is left pending at a
    checkpoint, so the sampler's saved state is exactly the batches trained on.
    """

    def __init__(self, sampler, images: np.ndarray, crop: int, fill: tuple[int, ...],
                 seed: int, rank: int = 0) -> None:
        self.sampler, self.images, self.crop, self.fill = sampler, images, crop, fill
        self.seed, self.rank = seed, rank
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="strong-view")
        self._pending: tuple[int, np.ndarray, Future[torch.Tensor]] | None = None

    def _start(self, iteration: int) -> tuple[int, np.ndarray, Future[torch.Tensor]]:
        index = self.sampler.next_batch()
        future = self._pool.submit(strong_batch, self.images, index, self.crop, self.fill,
                                   step_rng(self.seed, self.rank, iteration))
        return iteration, index, future

    def next(self, iteration: int, ahead: bool) -> tuple[np.ndarray, torch.Tensor]:
        current = self._pending
        if current is None or current[0] != iteration:
            if current is not None:
                current[2].cancel()
                raise RuntimeError(f"strong views were prefetched for iteration {current[0]}, "
                                   f"not {iteration}")
            current = self._start(iteration)
        self._pending = self._start(iteration + 1) if ahead else None
        _, index, future = current
        return index, future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
