"""Reading what a search left in Tune's storage: trials, their results and their best deltas.

MLflow is filled from these files by `vlpuda sync`, and the per-task fronts are computed from them,
so nothing here depends on MLflow having worked during the search. Storage may be a local folder
or a cluster's shared URI (s3://, gs://): pyarrow's filesystems read both the same way.

An experiment folder (`<ray_storage>/<experiment>/`) holds `experiment_state-<time>.json` (every
trial's id, status, config and folder), one folder per trial with `result.json` (one JSON result
per line, in order), and `tuner.pkl`. Train runs keep their checkpoints under
`<ray_storage>/train/`; each result names its checkpoint in `checkpoint_path`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from vlpuda.layout import (
    BEST_DELTA_FILE,
    DELTA_FILE,
    LADDER_FILE,
    RESULT_FILE,
    TUNER_FILE,
    TUNE_STATE_PREFIX,
)

# Tune statuses after which a trial produces no more results.
DONE, ERROR = "TERMINATED", "ERROR"


@dataclass
class TuneTrial:
    """One Tune trial as its files describe it."""

    trial_id: str
    experiment: str
    status: str  # Tune's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    config: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in (DONE, ERROR)

    @property
    def errored(self) -> bool:
        return self.status == ERROR

    @property
    def last(self) -> dict[str, Any]:
        return self.rows[-1] if self.rows else {}


def _fs(path_or_uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path_or_uri:
        return pafs.FileSystem.from_uri(path_or_uri)
    return pafs.LocalFileSystem(), str(Path(path_or_uri).expanduser().resolve())


def _children(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        return []
    return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))


def _read_text(fs: pafs.FileSystem, path: str) -> str | None:
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.readall().decode()


def experiments(ray_storage: str) -> list[str]:
    """The Tune experiments under a search's storage, oldest first (their names sort by time)."""
    fs, root = _fs(ray_storage)
    names = []
    for entry in _children(fs, root):
        if entry.type == pafs.FileType.Directory and \
                fs.get_file_info(f"{entry.path}/{TUNER_FILE}").type == pafs.FileType.File:
            names.append(entry.base_name)
    return sorted(names)


def _rows(fs: pafs.FileSystem, trial_dir: str) -> list[dict[str, Any]]:
    text = _read_text(fs, f"{trial_dir}/{RESULT_FILE}") or ""
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash: everything before it counts
            break
    return rows


def _state_entries(fs: pafs.FileSystem, folder: str) -> list[dict[str, Any]]:
    """The trials of the newest experiment snapshot (a resumed run writes a newer one)."""
    states = sorted(e.path for e in _children(fs, folder)
                    if e.base_name.startswith(TUNE_STATE_PREFIX) and e.base_name.endswith(".json"))
    if not states:
        return []
    data = json.loads(_read_text(fs, states[-1]) or "{}")
    entries = []
    for item in data.get("trial_data", []):
        # Each entry is [trial json, runtime json] in Ray 2.60.
        raw = item[0] if isinstance(item, list) else item
        entries.append(json.loads(raw) if isinstance(raw, str) else raw)
    return entries


def read_experiment(ray_storage: str, experiment: str) -> list[TuneTrial]:
    """Every trial of one Tune experiment, in Tune's order, with its results."""
    fs, root = _fs(ray_storage)
    folder = f"{root}/{experiment}"
    trials = []
    for entry in _state_entries(fs, folder):
        trial_dir = f"{folder}/{entry.get('relative_logdir', '')}"
        trials.append(TuneTrial(
            trial_id=str(entry["trial_id"]),
            experiment=experiment,
            status=str(entry.get("status", "PENDING")),
            config=dict(entry.get("config") or {}),
            rows=_rows(fs, trial_dir) if entry.get("relative_logdir") else [],
        ))
    return trials


def read_all(ray_storage: str) -> dict[str, TuneTrial]:
    """Every trial of every experiment under the storage, by Tune trial id."""
    return {t.trial_id: t for name in experiments(ray_storage)
            for t in read_experiment(ray_storage, name)}


def _delta_sources(fs: pafs.FileSystem, folder: str) -> str | None:
    """The best delta of one task's checkpoint folder: best_delta when the last epoch was not
    the best, else the last epoch's own delta."""
    for name in (BEST_DELTA_FILE, DELTA_FILE):
        if fs.get_file_info(f"{folder}/{name}").type == pafs.FileType.File:
            return f"{folder}/{name}"
    return None


def fetch_best_deltas(checkpoint: str, tasks: list[str], out_dir: Path) -> list[Path]:
    """Copy a trial checkpoint's best delta(s) to `out_dir` as best_delta.safetensors (one per
    task sub-folder in a multi-task search). Only the deltas are read, never the optimizer state
    beside them (hundreds of MB for a ViT).

    Returns:
        The files written; empty when the checkpoint holds no delta (or is gone).
    """
    fs, root = _fs(checkpoint)
    folders = [("", root)] if len(tasks) <= 1 else [(t, f"{root}/{t}") for t in tasks]
    written = []
    for task, folder in folders:
        source = _delta_sources(fs, folder)
        if source is None:
            continue
        target = out_dir / task / BEST_DELTA_FILE if task else out_dir / BEST_DELTA_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(source) as stream, open(target, "wb") as handle:
            shutil.copyfileobj(stream, handle)
        written.append(target)
        # The sparsity ladder's cuts of that delta (trainables/ladder.py), beside it.
        for info in fs.get_file_info(pafs.FileSelector(folder)):
            name = info.base_name
            if info.type == pafs.FileType.File and LADDER_FILE.match(name):
                with fs.open_input_stream(info.path) as stream, \
                        open(target.with_name(name), "wb") as handle:
                    shutil.copyfileobj(stream, handle)
    return written
