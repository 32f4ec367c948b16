"""Listing, decoding, caching, sampling and batch views on small real image files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from vlpuda.errors import DataError
from vlpuda.trainables import views as data
from vlpuda.trainables.decoded import DecodedDomain, decode_domain, decoded_from_arrays
from vlpuda.trainables.lists import (
    IMG_EXTENSIONS,
    Sample,
    check_same_classes,
    list_imagefolder,
    read_image_list,
)
from vlpuda.trainables.sampler import InfiniteSampler
from vlpuda.trainables.views import cached_train_input, model_input, train_views

# Real Office-Home names; 'TV' < 'Table' < ... only under a case-sensitive sort.
OFFICE_HOME_CLASSES = ["Alarm_Clock", "TV", "Table", "Bike", "the_lowercase"]


def _random_image(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _write_domain(root: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(OFFICE_HOME_CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        # Non-square sizes, so squashing (not cropping) is observable; mixed formats and case.
        _random_image(rng, 40, 24).save(folder / "b.png")
        _random_image(rng, 30, 50).save(folder / "a.JPG", quality=95)
        if c == 0:
            (folder / "nested").mkdir()
            _random_image(rng, 20, 20).save(folder / "nested" / "c.jpeg")
            (folder / "notes.txt").write_text("not an image")


@pytest.fixture
def office_home(tmp_path: Path) -> Path:
    for i, domain in enumerate(("Art", "Clipart")):
        _write_domain(tmp_path / "office_home" / domain, seed=i)
    return tmp_path / "office_home"


# --- listing ------------------------------------------------------------------------------------


def test_extensions_match_torchvision() -> None:
    from torchvision.datasets.folder import IMG_EXTENSIONS as tv

    assert set(IMG_EXTENSIONS) == set(tv)


def test_imagefolder_order_matches_torchvision(office_home: Path) -> None:
    for domain in ("Art", "Clipart"):
        classes, samples = list_imagefolder(office_home / domain)
        reference = ImageFolder(str(office_home / domain))
        assert classes == reference.classes
        assert classes.index("TV") < classes.index("Table")
        assert [(str(s.path), s.label) for s in samples] == reference.samples


def test_imagefolder_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing"):
        list_imagefolder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        list_imagefolder(tmp_path / "empty")
    (tmp_path / "dom" / "Bike").mkdir(parents=True)
    (tmp_path / "dom" / "Bike" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"dom/Bike has no images"):
        list_imagefolder(tmp_path / "dom")


def _office31(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("back_pack", "bike", "TV monitor"):
        folder = tmp_path / "amazon" / "images" / name
        folder.mkdir(parents=True)
        for i in range(2):
            _random_image(rng, 16, 16).save(folder / f"frame_{i:04d}.jpg")
    return tmp_path


def _write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_image_list_derives_classes_from_folders(tmp_path: Path) -> None:
    root = _office31(tmp_path)
    lst = _write_list(tmp_path / "amazon.txt", [
        "amazon/images/bike/frame_0000.jpg 1",
        "",
        "amazon/images/back_pack/frame_0000.jpg 0",
        "amazon/images/TV monitor/frame_0001.jpg 2",  # a space in the path
        "amazon/images/bike/frame_0001.jpg 1",
    ])
    classes, samples = read_image_list(lst, root)
    assert classes == ["back_pack", "bike", "TV monitor"]
    assert [s.label for s in samples] == [1, 0, 2, 1]
    assert samples[2] == Sample(root / "amazon/images/TV monitor/frame_0001.jpg", 2)

    given, _ = read_image_list(lst, root, classes=["a", "b", "c", "d"])
    assert given == ["a", "b", "c", "d"]
    with pytest.raises(DataError, match=r"amazon\.txt:4: label 2 but only 2 classes"):
        read_image_list(lst, root, classes=["a", "b"])


def test_read_image_list_errors(tmp_path: Path) -> None:
    root = _office31(tmp_path)
    bad = _write_list(tmp_path / "bad.txt", [
        "amazon/images/bike/frame_0000.jpg 0",
        "",
        "amazon/images/bike/frame_0001.jpg",
    ])
    with pytest.raises(DataError, match=r"bad\.txt:3: expected"):
        read_image_list(bad, root)
    not_int = _write_list(tmp_path / "notint.txt", ["amazon/images/bike/frame_0000.jpg one"])
    with pytest.raises(DataError, match=r"notint\.txt:1: label 'one' is not an integer"):
        read_image_list(not_int, root)

    clash = _write_list(tmp_path / "clash.txt", [
        "amazon/images/bike/frame_0000.jpg 0",
        "amazon/images/back_pack/frame_0000.jpg 0",
    ])
    with pytest.raises(DataError, match=r"label 0 .*'bike' and 'back_pack'.*classes:"):
        read_image_list(clash, root)
    # Given names resolve the ambiguity.
    assert read_image_list(clash, root, classes=["things"])[0] == ["things"]

    gap = _write_list(tmp_path / "gap.txt", [
        "amazon/images/bike/frame_0000.jpg 0",
        "amazon/images/back_pack/frame_0000.jpg 2",
    ])
    with pytest.raises(DataError, match=r"no image has label\(s\) \[1\]"):
        read_image_list(gap, root)

    missing = _write_list(tmp_path / "missing.txt", ["amazon/images/bike/nope.jpg 0"])
    with pytest.raises(DataError, match=r"do not exist .*nope\.jpg"):
        read_image_list(missing, root)
    with pytest.raises(DataError, match="does not exist"):
        read_image_list(tmp_path / "absent.txt", root)


def test_check_same_classes() -> None:
    check_same_classes("Art", ["a", "b"], "Clipart", ["a", "b"])
    with pytest.raises(DataError) as err:
        check_same_classes("Art", ["TV", "Table", "Bike"], "Clipart", ["TV", "Table", "Mug"])
    assert "only in Art: ['Bike']" in str(err.value)
    assert "only in Clipart: ['Mug']" in str(err.value)
    with pytest.raises(DataError, match="same classes, different order"):
        check_same_classes("Art", ["TV", "Table"], "Clipart", ["Table", "TV"])


# --- decoding and the cache ---------------------------------------------------------------------


def test_decode_domain_shapes_and_squash(office_home: Path) -> None:
    classes, samples = list_imagefolder(office_home / "Art")
    dom = decode_domain("Art", classes, samples, train_resize=20, image_size=12, num_threads=2)
    assert isinstance(dom, DecodedDomain) and len(dom) == len(samples)
    assert dom.train_images.shape == (len(samples), 20, 20, 3)
    assert dom.test_images.shape == (len(samples), 12, 12, 3)
    assert dom.train_images.dtype == dom.test_images.dtype == np.uint8
    assert dom.labels.dtype == np.int64
    assert dom.labels.tolist() == [s.label for s in samples]
    # Test images come from the original file, not from the 20 px version.
    with Image.open(samples[1].path) as im:
        direct = np.asarray(im.convert("RGB").resize((12, 12), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(dom.test_images[1], direct)

    same = decode_domain("Art", classes, samples, train_resize=16, image_size=16)
    assert same.train_images is same.test_images


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_image_names_the_file(office_home: Path, kind: str) -> None:
    classes, samples = list_imagefolder(office_home / "Art")
    victim = samples[3].path
    if kind == "garbage":
        victim = victim.with_name("broken.jpg")
        victim.write_bytes(b"this is not a jpeg" * 20)
    else:
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
    classes, samples = list_imagefolder(office_home / "Art")
    with pytest.raises(DataError, match="remove or replace") as err:
        decode_domain("Art", classes, samples, 16, 16, num_threads=2)
    assert str(victim) in str(err.value)


def test_cache_is_reused_without_decoding(office_home: Path, tmp_path: Path) -> None:
    classes, samples = list_imagefolder(office_home / "Clipart")
    cache = tmp_path / "cache"
    first = decode_domain("Clipart", classes, samples, 20, 12, cache_dir=cache)
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1

    # Overwrite one image with garbage of the same size and mtime: the key is unchanged, so a
    # second call can only succeed if it loads the cache instead of decoding the files.
    victim = samples[0].path
    st = victim.stat()
    victim.write_bytes(b"\0" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = decode_domain("Clipart", classes, samples, 20, 12, cache_dir=cache)
    for arr in (second.train_images, second.test_images):
        assert isinstance(arr.base, np.memmap) and not arr.flags.writeable
        # Out-of-band under pickle protocol 5: Ray's object store shares it without a copy.
        buffers: list[pickle.PickleBuffer] = []
        pickle.dumps(arr, protocol=5, buffer_callback=buffers.append)
        assert len(buffers) == 1
    np.testing.assert_array_equal(second.train_images, first.train_images)
    np.testing.assert_array_equal(second.test_images, first.test_images)

    # A changed mtime is a new key: now the garbage is decoded and reported.
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match=str(victim)):
        decode_domain("Clipart", classes, samples, 20, 12, cache_dir=cache)
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp")]


def test_decoded_from_arrays_validates() -> None:
    imgs = np.zeros((4, 8, 8, 3), np.uint8)
    dom = decoded_from_arrays("d", ["a", "b"], np.array([0, 1, 1, 0], np.int32), imgs, imgs)
    assert dom.labels.dtype == np.int64 and len(dom) == 4
    with pytest.raises(ValueError, match="uint8"):
        decoded_from_arrays("d", ["a", "b"], np.zeros(4, int), imgs.astype(np.float32), imgs)
    with pytest.raises(ValueError, match=r"\(4, S, S, 3\)"):
        decoded_from_arrays("d", ["a", "b"], np.zeros(4, int), imgs, imgs[:3])
    with pytest.raises(ValueError, match="labels must lie"):
        decoded_from_arrays("d", ["a"], np.array([0, 1, 0, 0]), imgs, imgs)


# --- sampling -----------------------------------------------------------------------------------


def _pass(sampler: InfiniteSampler) -> np.ndarray:
    return np.concatenate([sampler.next_batch() for _ in range(sampler.batches_per_pass)])


def test_sampler_covers_each_index_once_per_pass() -> None:
    sampler = InfiniteSampler(n=40, batch_size=8, seed=3)
    first, second = _pass(sampler), _pass(sampler)
    assert sorted(first.tolist()) == list(range(40))
    assert sorted(second.tolist()) == list(range(40))
    assert not np.array_equal(first, second)  # reshuffled
    batch = sampler.next_batch()
    assert batch.dtype == np.int64 and batch.shape == (8,)


def test_sampler_drops_the_last_partial_batch() -> None:
    sampler = InfiniteSampler(n=10, batch_size=4, seed=0)
    assert sampler.batches_per_pass == 2
    assert len(set(_pass(sampler).tolist())) == 8


def test_sampler_ddp_shards_are_disjoint() -> None:
    shards = [_pass(InfiniteSampler(n=43, batch_size=5, seed=1, rank=r, world_size=3))
              for r in range(3)]
    assert all(len(s) == 10 for s in shards)
    union = np.concatenate(shards)
    assert len(set(union.tolist())) == len(union)


def test_sampler_state_round_trip() -> None:
    a = InfiniteSampler(n=30, batch_size=7, seed=5)
    for _ in range(6):  # past a pass boundary (4 batches per pass)
        a.next_batch()
    state = a.state_dict()
    assert all(type(v) is int for v in state.values())
    b = InfiniteSampler(n=30, batch_size=7, seed=5)
    b.load_state_dict(state)
    for _ in range(9):
        np.testing.assert_array_equal(a.next_batch(), b.next_batch())


def test_sampler_too_small_domain() -> None:
    with pytest.raises(DataError, match="Art has 10 images .* fewer than the batch size 8"):
        InfiniteSampler(n=10, batch_size=8, seed=0, world_size=2, name="Art")


# --- batch views --------------------------------------------------------------------------------


def _left_white(b: int, s: int) -> torch.Tensor:
    img = torch.zeros(b, s, s, 3, dtype=torch.uint8)
    img[:, :, : s // 2] = 255
    return img


def test_train_views_deterministic_and_uint8() -> None:
    imgs = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 20, 20, 3), np.uint8))
    a = train_views(imgs, crop=16, pad=2, hflip=True, generator=torch.Generator().manual_seed(1))
    b = train_views(imgs, crop=16, pad=2, hflip=True, generator=torch.Generator().manual_seed(1))
    c = train_views(imgs, crop=16, pad=2, hflip=True, generator=torch.Generator().manual_seed(2))
    assert a.shape == (6, 16, 16, 3) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_train_views_crop_is_a_window_of_the_padded_image() -> None:
    imgs = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (8, 10, 10, 3), np.uint8))
    gen = torch.Generator().manual_seed(0)
    out = train_views(imgs, crop=10, pad=3, hflip=False, generator=gen)
    padded = torch.nn.functional.pad(imgs, (0, 0, 3, 3, 3, 3))  # zero borders, H and W
    offsets = set()
    for i in range(8):
        windows = {(y, x): padded[i, y : y + 10, x : x + 10] for y in range(7) for x in range(7)}
        matches = [at for at, w in windows.items() if torch.equal(out[i], w)]
        assert matches, i
        offsets.add(matches[0])
    assert len(offsets) > 1  # random offsets, not one fixed window


def test_train_views_flip_flips() -> None:
    imgs = _left_white(32, 8)
    gen = torch.Generator().manual_seed(0)
    out = train_views(imgs, crop=8, pad=0, hflip=True, generator=gen)
    left_white = out[:, 0, 0, 0] == 255
    flipped = out[:, 0, -1, 0] == 255
    assert torch.all(left_white ^ flipped)  # each view is the image or its mirror
    assert torch.equal(out[flipped], imgs[flipped].flip(2))
    assert 0 < int(flipped.sum()) < 32
    unflipped = train_views(imgs, crop=8, pad=0, hflip=False, generator=gen)
    assert torch.equal(unflipped, imgs)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_model_input_normalises_per_channel(layout) -> None:
    imgs = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(2, 4, 5, 3)
    x = model_input(imgs, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0), memory_format=layout)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=layout)
    # (v / 255 - mean) / std by hand: (0 - .5) / .5, (.2 - .25) / .25, (1 - 0) / 2
    for channel, expected in enumerate((-1.0, -0.2, 0.5)):
        assert torch.allclose(x[:, channel], torch.tensor(expected), atol=1e-6)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(("size", "crop", "pad"), [(20, 16, 0), (10, 10, 3), (12, 8, 5)])
@pytest.mark.parametrize("windows_per_chunk", [1, 4, None])
def test_cached_train_input_equals_the_batch_path(tmp_path, monkeypatch, layout, size, crop, pad,
                                                  windows_per_chunk) -> None:
    # Read-only memory map, as the decoded cache and Ray's object store hand it to a trial;
    # pad 5 around 12 px with an 8 px crop puts some windows wholly or partly on the border.
    # Chunks of 1 and 4 windows (6 images: a short last chunk) and the default (one chunk).
    if windows_per_chunk:
        monkeypatch.setattr(data, "CHUNK_BYTES", windows_per_chunk * crop * crop * 3 * 4)
    path = tmp_path / "images.npy"
    np.save(path, np.random.default_rng(5).integers(0, 256, (9, size, size, 3), np.uint8))
    images = np.load(path, mmap_mode="r")
    index = np.array([7, 0, 3, 3, 8, 1])
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    fused_gen, batch_gen = torch.Generator().manual_seed(6), torch.Generator().manual_seed(6)
    fused = cached_train_input(images, index, crop, pad, True, fused_gen, mean, std, layout)
    views = train_views(torch.from_numpy(images[index]), crop, pad, True, batch_gen)
    expected = model_input(views, mean, std, layout)
    assert fused.is_contiguous(memory_format=layout)
    assert torch.equal(fused, expected)  # bit for bit: the same multiply-add per element
    # The same draws, so a resumed trial's views do not depend on the path or the device.
    assert torch.equal(fused_gen.get_state(), batch_gen.get_state())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_views_are_device_independent() -> None:
    imgs = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (8, 20, 20, 3), np.uint8))
    cpu = train_views(imgs, 16, 2, True, torch.Generator().manual_seed(4))
    gpu = train_views(imgs.cuda(), 16, 2, True, torch.Generator().manual_seed(4))
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
