"""Training-batch throughput: vlpuda's decoded cache against a JPEG-decoding DataLoader.

    .venv/bin/python benchmarks/data_pipeline.py                 # ~1-2 min on 2 cores
    .venv/bin/python benchmarks/data_pipeline.py --torch-threads 1 --rounds 5

Both pipelines make the paper's training batch (docs/method.md#data-and-views) on the same cores:
  baseline  torchvision ImageFolder + Resize((256, 256)), RandomCrop(224), RandomHorizontalFlip,
            ToTensor, Normalize(CLIP mean/std), through DataLoader(num_workers=2, batch 32,
            shuffle, drop_last): every image is opened and decoded each time it is drawn,
  vlpuda    decode_domain once into the on-disk cache (timed separately: a one-off per node), then
            per batch of 32: InfiniteSampler and cached_train_input (each image's random window
            read from the memory-mapped uint8 array, flipped, converted and normalised), as the
            training loop does on a CPU-only node.
  batch     the GPU node's path run on the CPU, for reference: a gather of the uint8 batch from
            the memory map, train_views (crop + flip, still uint8), model_input (float,
            normalised); on a GPU node only the gather runs on the CPU.
Images are generated JPEGs of 256..400 px per side in class folders, in a temporary directory
removed afterwards. The two pipelines are timed in alternating rounds so that load from other
jobs hits both alike; the first batches of each round (worker start-up, page faults) are not
timed. Prints images/s for each, the median per-round ratio, the decode cost in baseline
epochs, and per-stage milliseconds of the cached path.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from vlpuda.trainables.decoded import DecodedDomain, decode_domain
from vlpuda.trainables.lists import list_imagefolder
from vlpuda.trainables.sampler import InfiniteSampler
from vlpuda.trainables.views import cached_train_input, model_input, train_views

# CLIP's normalisation (docs/method.md#normalisation).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TRAIN_RESIZE, CROP = 256, 224


# ---- Data ----------------------------------------------------------------------------------


def synthetic_photo(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A smooth colour field with texture: compresses and decodes like a photo, unlike noise.

    Drawn at an eighth of the size and upsampled, so generating 600 images takes seconds.
    """
    small_h, small_w = max(2, height // 8), max(2, width // 8)
    y = np.linspace(0.0, 1.0, small_h)[:, None, None]
    x = np.linspace(0.0, 1.0, small_w)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, size=(1, 1, 3))
    freq = rng.uniform(1.0, 6.0, size=(2, 1, 1, 3))
    field = 0.5 + 0.35 * np.sin(2 * np.pi * (freq[0] * x + freq[1] * y) + phase)
    field = field + rng.normal(0.0, 0.08, size=(small_h, small_w, 3))
    small = Image.fromarray((np.clip(field, 0.0, 1.0) * 255).astype(np.uint8))
    return small.resize((width, height), Image.Resampling.BICUBIC)


def write_images(root: Path, n_images: int, n_classes: int, seed: int = 0) -> None:
    """n_images JPEGs (quality 90) of 256..400 px per side, spread over class folders."""
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        folder = root / f"class_{i % n_classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        height, width = rng.integers(256, 401, size=2)
        synthetic_photo(rng, int(height), int(width)).save(folder / f"{i:05d}.jpg", quality=90)


# ---- The two pipelines ---------------------------------------------------------------------


def baseline_loader(root: Path, batch: int, workers: int) -> DataLoader:
    """ImageFolder with the paper's train transform, through a multi-worker DataLoader."""
    transform = transforms.Compose([
        transforms.Resize((TRAIN_RESIZE, TRAIN_RESIZE)),
        transforms.RandomCrop(CROP),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])
    return DataLoader(datasets.ImageFolder(str(root), transform=transform), batch_size=batch,
                      shuffle=True, drop_last=True, num_workers=workers)


def endless(loader: DataLoader) -> Iterator[torch.Tensor]:
    """The loader's image batches, epoch after epoch."""
    while True:
        for images, _labels in loader:
            yield images


@dataclass
class CachedPipeline:
    """The training loop's batch paths over a decoded domain (loop.TaskRun._weak_view)."""

    domain: DecodedDomain
    sampler: InfiniteSampler
    generator: torch.Generator

    def batches(self) -> Iterator[torch.Tensor]:
        """A CPU-only node's path: windows read, converted and normalised image by image."""
        while True:
            yield cached_train_input(self.domain.train_images, self.sampler.next_batch(), CROP,
                                     0, True, self.generator, CLIP_MEAN, CLIP_STD)

    def gather(self) -> torch.Tensor:
        index = self.sampler.next_batch()
        return torch.from_numpy(np.asarray(self.domain.train_images[index]))

    def views(self, images: torch.Tensor) -> torch.Tensor:
        return train_views(images, CROP, 0, True, self.generator)

    def batch_path(self) -> Iterator[torch.Tensor]:
        """A GPU node's path (gather, then crop and normalise as batches), here on the CPU."""
        while True:
            yield model_input(self.views(self.gather()), CLIP_MEAN, CLIP_STD)


def open_cached(root: Path, cache: Path, batch: int, threads: int
                ) -> tuple[CachedPipeline, float, float]:
    """The cached pipeline, the one-off decode's seconds and a cache hit's seconds."""
    classes, samples = list_imagefolder(root)
    start = time.perf_counter()
    decode_domain("bench", classes, samples, TRAIN_RESIZE, CROP, cache, threads)
    decode_seconds = time.perf_counter() - start
    # What every later trial on the node pays: find the entry and memory-map it.
    start = time.perf_counter()
    domain = decode_domain("bench", classes, samples, TRAIN_RESIZE, CROP, cache, threads)
    open_seconds = time.perf_counter() - start
    pipeline = CachedPipeline(domain, InfiniteSampler(len(domain), batch, seed=0),
                              torch.Generator().manual_seed(0))
    return pipeline, decode_seconds, open_seconds


def stage_milliseconds(pipeline: CachedPipeline, repeats: int) -> dict[str, float]:
    """Median milliseconds per batch of each stage of the batch path."""
    stages = ("gather", "train_views", "model_input")
    times: dict[str, list[float]] = {stage: [] for stage in stages}
    for _ in range(repeats):
        marks = [time.perf_counter()]
        images = pipeline.gather()
        marks.append(time.perf_counter())
        views = pipeline.views(images)
        marks.append(time.perf_counter())
        model_input(views, CLIP_MEAN, CLIP_STD)
        marks.append(time.perf_counter())
        for stage, begin, end in zip(stages, marks, marks[1:]):
            times[stage].append(end - begin)
    return {stage: 1e3 * statistics.median(values) for stage, values in times.items()}


def images_per_second(batches: Iterator[torch.Tensor], warmup: int, timed: int) -> float:
    """Throughput over `timed` batches after `warmup` untimed ones (worker start-up, first
    page faults), then closes the iterator so a DataLoader's workers stop before the other
    pipeline is timed."""
    size = 0
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(timed):
        size += next(batches).shape[0]
    seconds = time.perf_counter() - start
    batches.close()
    return size / seconds


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def timed_call(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---- Main ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="baseline DataLoader workers")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating baseline / vlpuda measurements")
    parser.add_argument("--batches", type=int, default=15, help="timed baseline batches a round")
    parser.add_argument("--vlpuda-batches", type=int, default=60,
                        help="timed vlpuda batches a round")
    parser.add_argument("--decode-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--torch-threads", type=int,
                        help="intra-op threads of this process (the vlpuda path); the "
                        "DataLoader's workers always use 1")
    return parser.parse_args(argv)


def measure_rounds(root: Path, pipeline: CachedPipeline, args: argparse.Namespace
                   ) -> dict[str, list[float]]:
    """Images/s of each pipeline, alternating, so load from other jobs hits all alike."""
    rates: dict[str, list[float]] = {"baseline": [], "vlpuda": [], "batch": []}
    for round_index in range(args.rounds):
        loader = baseline_loader(root, args.batch, args.workers)
        rates["baseline"].append(images_per_second(endless(loader), 3, args.batches))
        del loader
        gc.collect()  # the DataLoader's worker processes exit before vlpuda's turn
        rates["vlpuda"].append(images_per_second(pipeline.batches(), 3, args.vlpuda_batches))
        rates["batch"].append(images_per_second(pipeline.batch_path(), 3, args.vlpuda_batches))
        base = rates["baseline"][-1]
        print(f"  round {round_index + 1}: baseline {base:7.1f} images/s, vlpuda "
              f"{rates['vlpuda'][-1]:7.1f} ({rates['vlpuda'][-1] / base:4.1f}x), batch path "
              f"{rates['batch'][-1]:7.1f} ({rates['batch'][-1] / base:4.1f}x) "
              f"(load {load_average()})")
    return rates


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"torch threads {torch.get_num_threads()}, load average {load_average()}")
    with tempfile.TemporaryDirectory(prefix="vlpuda-bench-") as tmp:
        root, cache = Path(tmp) / "images", Path(tmp) / "cache"
        seconds = timed_call(lambda: write_images(root, args.images, args.classes))
        jpeg_mb = sum(p.stat().st_size for p in root.rglob("*.jpg")) / 1e6
        print(f"generated {args.images} JPEGs ({jpeg_mb:.1f} MB) in {seconds:.1f} s")

        pipeline, decode_s, open_s = open_cached(root, cache, args.batch, args.decode_threads)
        cache_mb = sum(p.stat().st_size for p in cache.rglob("*.npy")) / 1e6
        print(f"one-off decode into the cache: {decode_s:.2f} s "
              f"({args.images / decode_s:.0f} images/s, {args.decode_threads} threads, "
              f"{cache_mb:.0f} MB on disk); reopening the cached entry: {open_s * 1e3:.1f} ms")

        rates = measure_rounds(root, pipeline, args)
        stages = stage_milliseconds(pipeline, 10)

    base_median = statistics.median(rates["baseline"])

    def ratio(name: str) -> float:  # the median of per-round ratios
        return statistics.median(o / b for o, b in zip(rates[name], rates["baseline"]))

    print(f"\nbaseline  ImageFolder + DataLoader(num_workers={args.workers}): "
          f"{base_median:8.1f} images/s (median of {args.rounds} rounds)")
    print(f"vlpuda    cached_train_input:                     "
          f"{statistics.median(rates['vlpuda']):8.1f} images/s, {ratio('vlpuda'):.1f}x "
          "(goal >= 10x)")
    print(f"batch     gather + train_views + model_input:     "
          f"{statistics.median(rates['batch']):8.1f} images/s, {ratio('batch'):.1f}x")
    print("          batch path per batch (median ms): "
          + ", ".join(f"{stage} {ms:.1f}" for stage, ms in stages.items()))
    epoch_s = args.images / base_median
    print(f"the one-off decode costs {decode_s / epoch_s:.2f} baseline epochs; it is paid once "
          "per node and dataset, not per trial")


if __name__ == "__main__":
    main()
