"""metrics.jsonl: one line per epoch of one run, each epoch once.

`vlpuda train` appends an epoch's line just before it swaps that epoch's checkpoint in, so every
epoch a checkpoint holds is in the file. A crash in between leaves a line past the checkpoint;
the resumed run trains that epoch again, and its first report drops such lines first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def drop_epochs_from(path: Path, epoch: int) -> None:
    """Remove the lines of epochs >= `epoch` (and any line cut short) from a metrics file."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            seen = json.loads(line).get("epoch")
        except (json.JSONDecodeError, AttributeError):
            continue  # a line cut short by a crash
        if isinstance(seen, int) and seen < epoch:
            kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept))


def append_epoch(path: Path, metrics: dict[str, Any], first_of_process: bool) -> None:
    """Append one epoch's line; the first report of a (resumed) process first drops the lines
    it is about to write again."""
    if first_of_process:
        drop_epochs_from(path, int(metrics["epoch"]))
    with open(path, "a") as handle:
        handle.write(json.dumps(metrics) + "\n")
