"""What a finished trial keeps on disk.

A Train checkpoint holds the trial's deltas (delta.safetensors, best_delta.safetensors), the
epoch's metrics and state.pt: the optimizer's dense SGD momentum for the whole visual tower
(4 bytes per weight), samplers and RNG state, needed only to resume training. Once the study
has recorded a trial as complete (or pruned), nothing resumes it any more, and export, sync and
evaluate need only the deltas and metrics: the state goes.
"""

from __future__ import annotations

from pathlib import Path

STATE_FILE = "state.pt"


def prune_training_state(checkpoint_dir: str | Path | None) -> int:
    """Delete the training state files under a finished trial's local checkpoint directory (one
    per task folder); returns the bytes freed. A remote or missing directory is left alone."""
    if not checkpoint_dir or "://" in str(checkpoint_dir):
        return 0
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return 0
    freed = 0
    for state in folder.rglob(STATE_FILE):
        freed += state.stat().st_size
        state.unlink()
    return freed
