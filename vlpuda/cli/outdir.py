"""`vlpuda train`'s output directory: checked before anything is loaded, and never overwritten
silently.

A run writes OUT_DIR/checkpoint/, OUT_DIR/best_delta.safetensors and OUT_DIR/metrics.jsonl.
The directory is created and probed for writing first, so a bad --out-dir costs seconds, not an
epoch; a directory that already holds a run is only touched with --resume (continue it) or
--overwrite (replace it), so metrics.jsonl always holds one run.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from vlpuda.errors import VlpudaError

METRICS_FILE = "metrics.jsonl"
# What a run writes into its out_dir (per task, best deltas go into sub-folders too).
RUN_FILES = ("checkpoint", "checkpoint.new", METRICS_FILE, "best_delta.safetensors")


def ensure_writable(out_dir: str | Path) -> Path:
    """Create `out_dir` (and its parents) and check a file can be written there."""
    path = Path(out_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise VlpudaError(
            f"out_dir: cannot write to {path} ({reason}); pass --out-dir (or out_dir=) a "
            "directory you can write") from None
    return path


def previous_run(out_dir: Path) -> list[str]:
    """The run files already in `out_dir` (empty when it holds no run)."""
    return sorted(name for name in RUN_FILES if (out_dir / name).exists())


def prepare_out_dir(out_dir: str | Path, resume: bool, overwrite: bool) -> Path:
    """The checked output directory. Refuses one that holds a run unless told what to do:
    --resume keeps it (and continues from its checkpoint), --overwrite removes the old run."""
    path = ensure_writable(out_dir)
    found = previous_run(path)
    if not found or resume:
        return path
    if not overwrite:
        raise VlpudaError(
            f"out_dir: {path} already holds a run ({', '.join(found)}); continue it with "
            f"--resume, write this run elsewhere with --out-dir DIR, or replace it with "
            "--overwrite")
    for name in found:
        target = path / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    for nested in path.glob("*/best_delta.safetensors"):  # a multi-task run's per-task deltas
        nested.unlink()
    return path
