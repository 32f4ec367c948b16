"""The run directory's layout: the names of the files every part of vlpuda reads and writes.

One home for these names, so the training loop that writes a file and the tracker, exporter and
back-fill that read it cannot drift apart (docs/run_dir.md describes the whole tree). A search's
run directory holds `search.json` (the manifest: where the study lives, the settings and the
preset, so `--resume`, `pareto` and `sync` need nothing else), `optuna.db` (the default study
storage), `ray/` (Tune and Train results), the front as CSV/JSON and, when it logs to its own
MLflow store, `mlflow.db`, `mlartifacts/` and `tracking.json`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vlpuda.errors import VlpudaError

# A run's (or a trial's) sparse deltas: the last epoch's and the epoch its selection metric kept.
DELTA_FILE = "delta.safetensors"
BEST_DELTA_FILE = "best_delta.safetensors"
# A sparsity-ladder cut keeping 1/d of a trial's changed weights.
LADDER_FILE = re.compile(r"^ladder_\d+\.safetensors$")


def ladder_file(divisor: int) -> str:
    return f"ladder_{divisor}.safetensors"


# ---- the search's run directory ---------------------------------------------------------------
MANIFEST = "search.json"
OPTUNA_DB = "optuna.db"  # the default study storage
RAY_DIR = "ray"  # the default Tune/Train storage
FRONT_CSV = "front.csv"
FRONT_JSON = "front.json"
MLFLOW_DB = "mlflow.db"  # the default MLflow store
MLFLOW_ARTIFACTS = "mlartifacts"
DESTINATION_FILE = "tracking.json"  # where the search logged to MLflow

# Tune's own files in an experiment folder under ray/.
TUNE_STATE_PREFIX = "experiment_state-"
TUNER_FILE = "tuner.pkl"
RESULT_FILE = "result.json"

# What `pareto` reads from a manifest, and what --resume and sync read (the driver writes all).
STUDY_KEYS = ("name", "study_name", "storage")
SEARCH_KEYS = (*STUDY_KEYS, "ray_storage", "experiment", "raw")


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = run_dir / f".{MANIFEST}.tmp"
    staging.write_text(json.dumps(manifest, indent=2, default=str))
    staging.replace(run_dir / MANIFEST)  # atomic: a crash never leaves half a manifest


def read_manifest(run_dir: str | Path, needs: tuple[str, ...] = STUDY_KEYS) -> dict[str, Any]:
    """The manifest of a search's run directory; a clear error when there is none, or when it is
    not JSON or lacks one of the keys the caller `needs`."""
    path = Path(run_dir).expanduser() / MANIFEST
    if not path.is_file():
        raise VlpudaError(f"{Path(run_dir)} is not a search run directory (no {MANIFEST}); "
                          "pass the directory a search printed as its run dir, e.g. runs/demo")
    damaged = ("; it is damaged (a search writes it whole): restore it from a copy, or start "
               "the search again with the same preset and --name (the study in its storage "
               "keeps the trials)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise VlpudaError(f"{path} is not valid JSON ({err}){damaged}") from None
    if not isinstance(manifest, dict):
        raise VlpudaError(f"{path} does not hold a JSON object{damaged}")
    missing = [key for key in needs if key not in manifest]
    if "raw" in needs and not missing and not isinstance(manifest["raw"], dict):
        missing = ["raw (the preset, a JSON object)"]
    if missing:
        raise VlpudaError(f"{path} lacks {', '.join(missing)}{damaged}")
    return manifest
