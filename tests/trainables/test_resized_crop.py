"""The digits random-resized-crop view against torchvision's RandomResizedCrop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from helpers import tiny_train_overrides, write_local_dir_model, write_tiny_domains
from vlpuda.config import build_config
from vlpuda.trainables.loop import train
from vlpuda.trainables.resized_crop import draw_box, resize_window, resized_crop_views

SCALE = (0.75, 1.2)  # the reference's digits scale: above 1, many tries do not fit


def _ks_close(a: np.ndarray, b: np.ndarray) -> bool:
    grid = np.union1d(a, b)
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return np.abs(fa - fb).max() < 1.95 * math.sqrt((len(a) + len(b)) / (len(a) * len(b)))


def test_windows_are_distributed_as_torchvisions() -> None:
    n, size = 20_000, 64
    image = torch.zeros(3, size, size)
    torch.manual_seed(0)  # torchvision draws from the global generator
    theirs = np.array([RandomResizedCrop.get_params(image, list(SCALE), [3 / 4, 4 / 3])
                       for _ in range(n)], dtype=float)
    gen = torch.Generator().manual_seed(0)
    ours = np.array([draw_box(size, size, SCALE, gen) for _ in range(n)], dtype=float)
    for boxes in (theirs, ours):
        assert (boxes[:, 2] <= size).all() and (boxes[:, 3] <= size).all()
        assert (boxes[:, 0] + boxes[:, 2] <= size).all()
        assert (boxes[:, 1] + boxes[:, 3] <= size).all()
    area = lambda b: b[:, 2] * b[:, 3] / size**2  # noqa: E731
    aspect = lambda b: b[:, 3] / b[:, 2]  # noqa: E731
    whole = lambda b: ((b[:, 2] == size) & (b[:, 3] == size)).astype(float)  # noqa: E731
    for stat in (area, aspect, lambda b: b[:, 0], lambda b: b[:, 1]):
        assert _ks_close(stat(theirs), stat(ours))
    se = math.sqrt(whole(theirs).var() / n + whole(ours).var() / n)
    assert abs(whole(theirs).mean() - whole(ours).mean()) < 5 * se + 1e-12
    assert area(ours).max() <= 1.0 and area(ours).min() >= 0.70  # rounding: a bit under 0.75


@pytest.mark.parametrize("box,size", [((3, 5, 20, 17), 48), ((0, 0, 32, 32), 224),
                                      ((10, 2, 12, 30), 16)])
def test_a_fixed_window_resizes_like_torchvision(box, size) -> None:
    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8))
    expected = TF.resized_crop(image.permute(2, 0, 1), *box, [size, size], antialias=True)
    ours = resize_window(image, box, size)
    assert ours.dtype == torch.uint8 and ours.shape == (size, size, 3)
    assert (ours.permute(2, 0, 1).int() - expected.int()).abs().max() <= 1  # rounding only


def test_views_follow_the_generator_and_the_flip_switch() -> None:
    images = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (6, 32, 32, 3), np.uint8))
    a = resized_crop_views(images, 24, SCALE, True, torch.Generator().manual_seed(3))
    b = resized_crop_views(images, 24, SCALE, True, torch.Generator().manual_seed(3))
    assert a.shape == (6, 24, 24, 3) and torch.equal(a, b)
    unflipped = resized_crop_views(images, 24, SCALE, False, torch.Generator().manual_seed(3))
    # Same windows; with the switch on, some of them are mirrored and the rest identical.
    mirrored = [torch.equal(x, y.flip(1)) and not torch.equal(x, y) for x, y in zip(a, unflipped)]
    same = [torch.equal(x, y) for x, y in zip(a, unflipped)]
    assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored)


def test_a_run_trains_on_resized_crops(tmp_path) -> None:
    data = write_tiny_domains(tmp_path / "data", per_class=8)
    model = write_local_dir_model(tmp_path / "model", "tiny-rn-test")
    overrides = {**tiny_train_overrides(data, model, tmp_path / "run"), "pretrained": None,
                 "epochs": 1, "pad": 0, "train_crop_scale": [0.75, 1.2],
                 "fixmatch": True}
    cfg, _ = build_config(overrides)
    assert cfg.train_crop_scale == (0.75, 1.2)
    metrics = train(cfg, reporter=lambda m, d: None)
    assert metrics["epoch"] == 1 and 0 <= metrics["target_acc_last"] <= 100
    with pytest.raises(Exception, match="train_crop_scale"):
        build_config({**overrides, "train_crop_scale": [1.2, 0.75]})
