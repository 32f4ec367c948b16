"""The offline demo: digit domains built from package files, and (slow) the trained teacher."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlpuda.trainables.decoded import decode_domain
from vlpuda.trainables.demo import prepare_demo
from vlpuda.trainables.demo_digits import (
    DEMO_CLASSES,
    DEMO_DOMAINS,
    build_digit_domains,
    digit_domain_arrays,
)
from vlpuda.trainables.demo_teacher import DEMO_TEMPLATE, zero_shot_accuracy
from vlpuda.trainables.lists import list_imagefolder

EXPECTED_SIZES = {"MNIST": 2500, "MNIST-M": 2000, "Printed": 2000}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    build_digit_domains(out, seed=0)
    return out


def _decoded(root: Path, domain: str) -> np.ndarray:
    classes, samples = list_imagefolder(root / domain)
    return decode_domain(domain, classes, samples, 32, 32, num_threads=2).train_images


def test_domains_are_imagefolders_of_ten_digits(digits: Path) -> None:
    assert sorted(p.name for p in digits.iterdir()) == sorted(DEMO_DOMAINS)
    for domain in DEMO_DOMAINS:
        classes, samples = list_imagefolder(digits / domain)
        assert classes == DEMO_CLASSES
        counts = np.bincount([s.label for s in samples], minlength=10)
        assert counts.sum() == EXPECTED_SIZES[domain]
        # Every class well represented (MNIST halves are random, so only roughly balanced).
        assert counts.min() >= 0.07 * counts.sum()
        if domain == "Printed":
            assert counts.tolist() == [200] * 10
        with Image.open(samples[0].path) as im:
            assert im.size == (32, 32) and im.mode == "RGB" and im.format == "PNG"


def test_domains_differ_in_statistics(digits: Path) -> None:
    images = {d: _decoded(digits, d).astype(np.float64) for d in DEMO_DOMAINS}
    mean = {d: x.mean() for d, x in images.items()}
    colour = {d: np.abs(x[..., 0] - x[..., 1]).mean() for d, x in images.items()}
    border = {d: x[:, 0, :, :].mean() for d, x in images.items()}
    # MNIST and Printed: white ink on a black background, grey only.
    for d in ("MNIST", "Printed"):
        assert colour[d] == 0.0 and border[d] < 5
    # MNIST-M: photo backgrounds, so bright, coloured borders.
    assert colour["MNIST-M"] > 10 and border["MNIST-M"] > 50
    assert mean["MNIST-M"] > 2 * max(mean["MNIST"], mean["Printed"])
    # Thin printed strokes at 18-27 px cover less area than MNIST's pen strokes.
    assert mean["MNIST"] > 1.5 * mean["Printed"]


def test_build_is_deterministic(digits: Path) -> None:
    # build_digit_domains writes exactly these arrays, so rebuilding them in memory is a rebuild.
    again = digit_domain_arrays(seed=0)
    other = digit_domain_arrays(seed=1)
    for domain in DEMO_DOMAINS:
        # File <digit>/<i>.png holds image i of the build, with its label.
        classes, samples = list_imagefolder(digits / domain)
        order = [int(s.path.stem) for s in samples]
        arrays, labels = again.domains[domain]
        assert sorted(order) == list(range(len(labels)))
        np.testing.assert_array_equal(_decoded(digits, domain), arrays[order])
        assert [s.label for s in samples] == labels[order].tolist()
        assert not np.array_equal(arrays, other.domains[domain][0])
    # Held-out MNIST is the other half: no image is in both.
    source = {im.tobytes() for im in again.domains["MNIST"][0]}
    assert not any(im.tobytes() in source for im in again.mnist_heldout[0])


@pytest.mark.slow
def test_prepare_demo_trains_a_loadable_teacher(tmp_path: Path) -> None:
    import open_clip

    messages: list[str] = []
    assets = prepare_demo(tmp_path, teacher_steps=60, seed=0, log=messages.append)
    assert any("zero-shot" in m for m in messages)
    assert not [p for p in tmp_path.iterdir() if "-tmp-" in p.name]

    local = "local-dir:" + str(assets.teacher_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(local)
    tokenizer = open_clip.get_tokenizer(local)
    text = tokenizer([DEMO_TEMPLATE.format(c) for c in DEMO_CLASSES])
    assert text.shape == (10, 16)

    classes, samples = list_imagefolder(assets.data_dir / "MNIST")
    dom = decode_domain("MNIST", classes, samples, 32, 32, num_threads=2)
    pick = np.random.default_rng(0).choice(len(dom), 500, replace=False)
    acc = zero_shot_accuracy(model, text, dom.train_images[pick], dom.labels[pick])
    assert acc >= 50.0

    # The PIL preprocess users get from open_clip matches the demo's normalisation.
    with Image.open(samples[0].path) as im:
        x = preprocess(im)
    expected = torch.from_numpy(dom.train_images[0]).permute(2, 0, 1).float() / 255 * 2 - 1
    assert torch.allclose(x, expected, atol=1e-6)

    summary = json.loads((assets.teacher_dir / "zero_shot.json").read_text())
    assert summary["zero_shot_accuracy_percent"]["MNIST-heldout"] >= 50.0
    assert summary["teacher_steps"] == 60

    # Cached: a second call returns at once without building.
    messages.clear()
    start = time.perf_counter()
    assert prepare_demo(tmp_path, teacher_steps=60, seed=0, log=messages.append) == assets
    assert time.perf_counter() - start < 1.0 and messages == []
