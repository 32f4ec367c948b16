"""The run directory's layout: the names of the files every part of vlpuda reads and writes.

One home for these names, so the training loop that writes a file and the tracker, exporter and
back-fill that read it cannot drift apart (docs/run_dir.md describes the whole tree).
"""

from __future__ import annotations

# A run's (or a trial's) sparse deltas: the last epoch's and the epoch its selection metric kept.
DELTA_FILE = "delta.safetensors"
BEST_DELTA_FILE = "best_delta.safetensors"
