"""The FixMatch strong view against timm's own `rand-m10-n2-mstd0.5` RandAugment.

The reference builds its strong view with timm's RandAugment on PIL images. Here timm's transform
itself is run with its op functions wrapped to record what it drew (the ops, whether each
applied, the arguments and the resampling filter); vlpuda's draws are compared with those
distributions, and for fixed ops and arguments the pixels are compared with timm's functions.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data import auto_augment as timm_aa

from vlpuda.trainables.sampler import InfiniteSampler
from vlpuda.trainables.strong_view import (
    GEOMETRIC,
    OPS,
    JitterDraw,
    OpDraw,
    StrongViewPrefetcher,
    apply_jitter,
    apply_op,
    draw_jitter,
    draw_ops,
    fill_colour,
    step_rng,
    strong_batch,
    strong_view,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
FILL = fill_colour(CLIP_MEAN)
N_IMAGES = 20_000  # 40,000 op draws each side: 5 standard errors are ~2 % on a proportion


def _timm_draws(n_images: int, monkeypatch) -> list[list[tuple[str, tuple, int | None]]]:
    """Run timm's transform on a tiny image n times; per image, the ops it applied as
    (name, arguments, resampling filter or None)."""
    hparams = {"translate_const": 100, "img_mean": FILL}  # the reference's ra_params
    transform = timm_aa.rand_augment_transform("rand-m10-n2-mstd0.5", hparams)
    assert sorted(op.name for op in transform.ops) == sorted(OPS)
    applied: list[tuple[str, tuple, int | None]] = []
    chosen: list[int | None] = []
    original_interpolation = timm_aa._interpolation

    def recording_interpolation(kwargs):
        chosen.append(original_interpolation(kwargs))
        return chosen[-1]

    monkeypatch.setattr(timm_aa, "_interpolation", recording_interpolation)
    for op in transform.ops:
        def record(img, *args, _name=op.name, _fn=op.aug_fn, **kwargs):
            before = len(chosen)
            _fn(img, *args, **kwargs)  # timm's own op: it draws the resampling filter
            applied.append((_name, args, chosen[-1] if len(chosen) > before else None))
            return img
        op.aug_fn = record
    random.seed(0)
    np.random.seed(0)
    img = Image.new("RGB", (4, 4), (90, 140, 200))
    per_image = []
    for _ in range(n_images):
        start = len(applied)
        transform(img)
        per_image.append(applied[start:])
    return per_image


def _ours(n_images: int) -> list[list[OpDraw]]:
    rng = np.random.default_rng(0)
    return [draw_ops(rng) for _ in range(n_images)]


def _close(a: np.ndarray, b: np.ndarray, sigmas: float = 5.0) -> bool:
    """Two samples' means agree within `sigmas` standard errors of their difference."""
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    return abs(a.mean() - b.mean()) <= sigmas * se + 1e-12


@pytest.fixture(scope="module")
def both(request):
    monkeypatch = pytest.MonkeyPatch()
    try:
        timm = _timm_draws(N_IMAGES, monkeypatch)
    finally:
        monkeypatch.undo()
    return timm, _ours(N_IMAGES)


def test_application_probability_and_op_frequencies_match_timm(both) -> None:
    timm, ours = both
    timm_applied = [name for image in timm for name, _, _ in image]
    ours_applied = [d.name for image in ours for d in image if d.applied]
    assert all(len(image) == 2 for image in ours)
    # Each of the 2 drawn ops applies with p = 0.5: the count of applied ops per image is
    # Binomial(2, 0.5) on both sides.
    for side in ([len(image) for image in timm], [sum(d.applied for d in im) for im in ours]):
        counts = Counter(side)
        for k, p in ((0, 0.25), (1, 0.5), (2, 0.25)):
            assert abs(counts[k] / N_IMAGES - p) < 5 * math.sqrt(p * (1 - p) / N_IMAGES)
    t, o = Counter(timm_applied), Counter(ours_applied)
    assert set(t) == set(o) == set(OPS)  # Invert and SolarizeAdd included
    for name in OPS:  # uniform over the 15 ops, on both sides
        pt, po = t[name] / len(timm_applied), o[name] / len(ours_applied)
        se = math.sqrt(pt * (1 - pt) / len(timm_applied) + po * (1 - po) / len(ours_applied))
        assert abs(pt - po) < 5 * se, name
        assert abs(po - 1 / 15) < 5 * math.sqrt((1 / 15) * (14 / 15) / len(ours_applied)), name


def _arguments(timm, ours, name):
    timm_args = np.array([args[0] for image in timm for n, args, _ in image if n == name],
                         dtype=float)
    ours_args = np.array([d.arg for image in ours for d in image if d.applied and d.name == name],
                         dtype=float)
    return timm_args, ours_args


# op -> its argument at the full magnitude 10 (the range's end)
FULL = {"Rotate": 30.0, "ShearX": 0.3, "ShearY": 0.3, "TranslateXRel": 0.45,
        "TranslateYRel": 0.45, "Color": 1.9, "Contrast": 1.9, "Brightness": 1.9,
        "Sharpness": 1.9, "Posterize": 4, "Solarize": 256, "SolarizeAdd": 110}


@pytest.mark.parametrize("name", sorted(FULL))
def test_argument_distributions_match_timm(both, name) -> None:
    timm_args, ours_args = _arguments(*both, name)
    assert len(timm_args) > 1000 and len(ours_args) > 1000
    for side in (timm_args, ours_args):
        assert np.abs(side).max() == pytest.approx(FULL[name])  # the magnitude is capped at 10
    a, b = np.abs(timm_args), np.abs(ours_args)
    assert _close(a, b), (a.mean(), b.mean())  # magnitude noise: same mean ...
    assert _close(a**2, b**2)  # ... and the same spread
    # N(10, 0.5) clipped at 10: about half of the draws sit exactly at the full magnitude.
    at_full = (np.isclose(a, FULL[name]), np.isclose(b, FULL[name]))
    assert _close(*(x.astype(float) for x in at_full))
    assert abs(at_full[1].mean() - 0.5) < 0.05
    if name in GEOMETRIC:  # signed: each sign half of the time
        assert _close((timm_args < 0).astype(float), (ours_args < 0).astype(float))
        assert abs((ours_args < 0).mean() - 0.5) < 0.05
    else:
        assert (ours_args >= 0).all() and (timm_args >= 0).all()
    # The whole distribution of |argument| (integer levels included): a two-sample
    # Kolmogorov-Smirnov distance below its 0.1 % critical value.
    grid = np.union1d(a, b)
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    assert np.abs(cdf_a - cdf_b).max() < 1.95 * math.sqrt((len(a) + len(b)) / (len(a) * len(b)))


def test_geometric_ops_resample_like_timm(both) -> None:
    timm, ours = both
    timm_filters = np.array([f for image in timm for n, _, f in image if n in GEOMETRIC])
    ours_filters = np.array([d.resample for image in ours for d in image
                             if d.applied and d.name in GEOMETRIC])
    bicubic = int(Image.Resampling.BICUBIC)
    assert set(timm_filters) == set(ours_filters) == {int(Image.Resampling.BILINEAR), bicubic}
    assert _close((timm_filters == bicubic).astype(float), (ours_filters == bicubic).astype(float))
    # Colour ops take no filter on either side.
    assert all(f is None for image in timm for n, _, f in image if n not in GEOMETRIC)
    assert all(d.resample is None for image in ours for d in image if d.name not in GEOMETRIC)


def _image(seed: int = 1, size: int = 33) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8))


# (op, argument, filter) cases, signs and both filters included; at magnitudes below 10 too.
PIXEL_CASES = [
    ("AutoContrast", None, None), ("Equalize", None, None), ("Invert", None, None),
    ("Rotate", 17.5, Image.Resampling.BILINEAR), ("Rotate", -30.0, Image.Resampling.BICUBIC),
    ("Posterize", 3, None), ("Posterize", 4, None), ("Solarize", 230, None),
    ("SolarizeAdd", 104, None), ("Color", 1.9, None), ("Contrast", 0.4, None),
    ("Brightness", 1.63, None), ("Sharpness", 1.9, None),
    ("ShearX", -0.3, Image.Resampling.BICUBIC), ("ShearY", 0.21, Image.Resampling.BILINEAR),
    ("TranslateXRel", 0.45, Image.Resampling.BILINEAR),
    ("TranslateYRel", -0.3, Image.Resampling.BICUBIC),
]


@pytest.mark.parametrize("name,arg,resample", PIXEL_CASES)
def test_pixels_equal_timm_for_a_fixed_op_and_argument(name, arg, resample) -> None:
    img = _image()
    args = () if arg is None else (arg,)
    kwargs = {"fillcolor": FILL, "resample": resample} if resample is not None else {}
    expected = timm_aa.NAME_TO_OP[name](img, *args, **kwargs)
    ours = apply_op(img, OpDraw(name, True, 10.0, arg, resample), FILL)
    assert np.array_equal(np.asarray(ours), np.asarray(expected))
    if name in GEOMETRIC:  # uncovered pixels take the mean colour, not black
        assert (np.asarray(ours) == FILL).all(axis=2).any()
    assert apply_op(img, OpDraw(name, False), FILL) is img  # not applied: unchanged


def test_color_jitter_equals_torchvision_for_fixed_factors() -> None:
    img = _image(3)
    draw = JitterDraw(("contrast", "saturation", "brightness"),
                      {"brightness": 1.31, "contrast": 0.64, "saturation": 1.12})
    expected = TF.adjust_brightness(TF.adjust_saturation(TF.adjust_contrast(img, 0.64), 1.12),
                                    1.31)
    assert np.array_equal(np.asarray(apply_jitter(img, draw)), np.asarray(expected))
    rng = np.random.default_rng(5)
    draws = [draw_jitter(rng) for _ in range(6000)]
    factors = np.array([d.factors["brightness"] for d in draws])
    assert factors.min() >= 0.6 and factors.max() <= 1.4  # ColorJitter(0.4): U[0.6, 1.4]
    assert abs(factors.mean() - 1.0) < 0.02
    orders = Counter(d.order for d in draws)
    assert len(orders) == 6 and min(orders.values()) > 800  # every order, about equally often


def test_strong_view_crops_the_center_and_depends_on_the_rng_alone() -> None:
    image = np.asarray(_image(4, 40))[:, :40].copy()
    a = strong_view(image, 32, FILL, np.random.default_rng(9))
    b = strong_view(image, 32, FILL, np.random.default_rng(9))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    # Over many draws the view differs from both the plain center crop and its mirror.
    center = image[4:36, 4:36]
    views = [strong_view(image, 32, FILL, np.random.default_rng(s)) for s in range(20)]
    assert any(not np.array_equal(v, center) and not np.array_equal(v, center[:, ::-1])
               for v in views)
    with pytest.raises(ValueError, match="exceeds"):
        strong_view(image, 41, FILL, np.random.default_rng(0))


def test_prefetcher_gives_the_synchronous_batches_and_leaves_the_sampler_in_step() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 20, 20, 3), dtype=np.uint8)
    steps = 5  # one epoch of 5 steps; the last does not look ahead
    fetcher = StrongViewPrefetcher(InfiniteSampler(12, 4, seed=3), images, 16, FILL, seed=7,
                                   rank=1)
    reference = InfiniteSampler(12, 4, seed=3)
    try:
        for it in range(steps):
            index, views = fetcher.next(it, ahead=it + 1 < steps)
            expected_index = reference.next_batch()
            assert np.array_equal(index, expected_index)
            expected = strong_batch(images, expected_index, 16, FILL, step_rng(7, 1, it))
            assert views.dtype == torch.uint8 and torch.equal(views, expected)
        # Nothing pending at the epoch's end: the saved sampler state is what was trained on.
        assert fetcher.sampler.state_dict() == reference.state_dict()
        with pytest.raises(RuntimeError, match="prefetched for iteration 6"):
            fetcher.next(5, ahead=True)
            fetcher.next(7, ahead=False)
    finally:
        fetcher.close()
