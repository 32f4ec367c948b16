"""FixMatch strong view: its CPU cost per step, and how much of it the prefetch thread hides.

    .venv/bin/python benchmarks/strong_view.py               # ~1 min on 2 cores
    .venv/bin/python benchmarks/strong_view.py --rounds 5 --step-ms 150 --torch-threads 1

Per batch of `--batch` target images decoded at 256 px (cropped to 224), in alternating rounds:
  reference  the reference code's strong transform on PIL images: CenterCrop, flip, torchvision
             ColorJitter(0.4, 0.4, 0.4, 0), timm's rand-m10-n2-mstd0.5 (timm itself),
  vlpuda     strong_view.strong_batch (same ops, own implementation, uint8 arrays in and out),
  weak       the weak view of the same batch (cached_train_input), for scale.
Then the training loop's use: `StrongViewPrefetcher.next` called once per simulated step whose
work is `--step-ms` of sleep (a GPU step, during which the training thread waits on the device
and the CPU is free). Prints ms per batch, the vlpuda/reference ratio, and the time a step still
waits for its strong views with the prefetcher (0 when fully hidden).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from torchvision import transforms

from vlpuda.trainables.sampler import InfiniteSampler
from vlpuda.trainables.strong_view import StrongViewPrefetcher, fill_colour, step_rng, strong_batch
from vlpuda.trainables.views import cached_train_input

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Images with large-scale structure (upsampled noise), so histogram ops see real spread."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(s).resize((size, size), Image.BICUBIC))
                     for s in small])


def reference_transform(crop: int):
    fill = fill_colour(CLIP_MEAN)
    return transforms.Compose([
        transforms.CenterCrop(crop), transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(0.4, 0.4, 0.4, 0.0),
        rand_augment_transform("rand-n2-m10-mstd0.5",
                               {"translate_const": int(crop * 0.45), "img_mean": fill}),
    ])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--step-ms", type=float, default=150.0,
                        help="simulated device time of one training step")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads (the weak view); default: torch's")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    images = smooth_images(4 * args.batch, args.size)
    fill = fill_colour(CLIP_MEAN)
    reference = reference_transform(args.crop)
    sampler = InfiniteSampler(len(images), args.batch, seed=0)
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {"reference": [], "vlpuda": [], "weak": []}
    for r in range(args.rounds):
        index = sampler.next_batch()
        pil = [Image.fromarray(images[i]) for i in index]
        times["reference"].append(timed(lambda: [reference(im) for im in pil]))
        times["vlpuda"].append(timed(lambda: strong_batch(images, index, args.crop, fill,
                                                          step_rng(0, 0, r))))
        times["weak"].append(timed(lambda: cached_train_input(
            images, index, args.crop, 0, True, gen, CLIP_MEAN, CLIP_STD)))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {platform.machine()} {platform.processor() or ''}, "
          f"torch threads {torch.get_num_threads()}, batch {args.batch}, "
          f"{args.size} -> {args.crop} px, {args.rounds} rounds (medians)")
    for name, value in med.items():
        print(f"  {name:9s} {value:8.1f} ms/batch  {value / args.batch:6.2f} ms/image")
    print(f"  vlpuda/reference {med['vlpuda'] / med['reference']:.2f}; "
          f"strong/weak {med['vlpuda'] / med['weak']:.1f}")

    fetcher = StrongViewPrefetcher(InfiniteSampler(len(images), args.batch, seed=1), images,
                                   args.crop, fill, seed=0)
    waits = []
    try:
        for it in range(args.steps):
            start = time.perf_counter()
            fetcher.next(it, ahead=it + 1 < args.steps)
            waits.append((time.perf_counter() - start) * 1000)
            time.sleep(args.step_ms / 1000)  # the device step: this thread waits, CPU is free
    finally:
        fetcher.close()
    steady = waits[1:-1] or waits  # the first step computes its own batch; nothing is ahead
    print(f"prefetched, {args.step_ms:.0f} ms steps: the step waits "
          f"{statistics.median(steady):.1f} ms (median; first step {waits[0]:.1f} ms) for its "
          f"strong views, against {med['vlpuda']:.1f} ms computed in line")


if __name__ == "__main__":
    main()
