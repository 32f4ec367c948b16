"""A random-resized-crop training view: the reference's digits transform.

See docs/method.md#digits-view.

`train_crop_scale: [0.75, 1.2]` replaces the weak view's plain random crop by torchvision's
RandomResizedCrop(image_size, scale, ratio 3/4..4/3): a window of a random area fraction and
aspect ratio (ten tries to fit, else the whole image), resized to image_size x image_size, then
the flip. It runs on the decoded uint8 batch on the batch's device; the window comes from the
stored train-size array rather than the original file, so it is one more resampling than the
reference's (a 28 px digit is first squashed to train_resize). Randomness: only the generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RATIO = (3 / 4, 4 / 3)  # torchvision's default aspect-ratio range


def draw_box(height: int, width: int, scale: tuple[float, float], generator: torch.Generator,
             ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of one window, drawn as torchvision's RandomResizedCrop draws it."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u_area, u_ratio = torch.rand(2, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_low + (log_high - log_low) * u_ratio)
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    # No fit in ten tries: the whole image, trimmed to the ratio range (a no-op for squares).
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_window(image: torch.Tensor, box: tuple[int, int, int, int], size: int
                  ) -> torch.Tensor:
    """uint8 (S, S, 3) -> the window `box` resized to uint8 (size, size, 3), bilinear with
    antialiasing and rounding, as torchvision resizes uint8 tensors."""
    top, left, h, w = box
    window = image[top : top + h, left : left + w].permute(2, 0, 1)[None].float()
    resized = F.interpolate(window, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=True)
    return resized[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)


def resized_crop_views(images: torch.Tensor, size: int, scale: tuple[float, float], hflip: bool,
                       generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> uint8 (B, size, size, 3): a random resized crop, then a flip with
    p = 0.5 when `hflip`, per image, on the images' device."""
    b, height, width = images.shape[:3]
    boxes = [draw_box(height, width, scale, generator) for _ in range(b)]
    flips = (torch.rand(b, generator=generator) < 0.5).tolist()
    views = []
    for image, box, flip in zip(images, boxes, flips):
        view = resize_window(image, box, size)
        views.append(view.flip(1) if hflip and flip else view)
    return torch.stack(views)
