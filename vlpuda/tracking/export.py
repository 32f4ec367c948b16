"""`vlpuda export`: fetch a trial's best delta from its MLflow run.

A child run holds `delta/best_delta.safetensors` (a multi-task trial: one per task folder),
the delta of the epoch with the best target accuracy, the one `target_acc` reports. Writing it
into the base model (`vlpuda evaluate --checkpoint DIR/best_delta.safetensors`) reproduces that
accuracy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vlpuda.tracking.content import BEST_DELTA, DELTA_ARTIFACT_DIR, TAG_TRIAL
from vlpuda.tracking.destination import (
    TrackingError,
    limit_http_retries,
    read_destination,
    resolve_destination,
    server_problem,
)


@dataclass
class Exported:
    """The files an export wrote and what the run reported for them."""

    run_id: str
    files: list[Path]
    target_acc: float | None
    stored_params: float | None  # of the best epoch, whose delta this is


def resolve_uri(tracking_uri: str | None) -> str:
    """A tracking URI from --tracking-uri (a URI, or a search's run dir), else the
    MLFLOW_TRACKING_URI environment variable."""
    given = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not given:
        raise TrackingError("no tracking URI: pass --tracking-uri (the one the search printed, "
                            "e.g. sqlite:////abs/runs/demo/mlflow.db, or the run dir itself) or "
                            "set MLFLOW_TRACKING_URI")
    as_dir = Path(given).expanduser()
    if "://" not in given and as_dir.is_dir():
        recorded = read_destination(as_dir)
        return (recorded or resolve_destination(None, as_dir)).uri
    return resolve_destination(given, Path.cwd()).uri


def export_delta(run_id: str, out_dir: str | Path, tracking_uri: str | None = None,
                 ladder: int | None = None) -> Exported:
    """Download a trial run's best delta(s) into `out_dir`; with `ladder` = d, instead its
    sparsity-ladder cut keeping 1/d of the changed weights (the front's point with fraction 1/d).

    Raises:
        TrackingError: when the server is unreachable, the run does not exist, or it holds no
            delta (a parent run, or a trial that ended before its first checkpoint).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = resolve_uri(tracking_uri)
    dest = resolve_destination(uri, Path.cwd())
    store = Path(uri.split(":///", 1)[1]) if dest.is_sqlite else None
    if store is not None and not store.is_file():
        # MlflowClient would create an empty store there: there is nothing to export from.
        raise TrackingError(f"no MLflow store at {store} ({tracking_uri or uri} holds no "
                            "search's tracking): pass the run dir or tracking URI the search "
                            "printed")
    limit_http_retries()
    problem = server_problem(dest)
    if problem is not None:
        raise TrackingError(f"{problem}; start the tracking server or pass another "
                            "--tracking-uri")
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise TrackingError(f"no run {run_id!r} at {uri} ({err.error_code}); copy a trial's "
                            "run id from the MLflow UI or the front table's mlflow_run_id "
                            "column") from None
    if not client.list_artifacts(run_id, DELTA_ARTIFACT_DIR):
        kind = "a trial" if TAG_TRIAL in run.data.tags else "not a trial run (a search's parent?)"
        raise TrackingError(f"run {run_id} holds no {DELTA_ARTIFACT_DIR}/ artifact: it is {kind}"
                            "; pick a trial that reported at least one epoch")
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vlpuda-export-") as tmp:
        local = Path(client.download_artifacts(run_id, DELTA_ARTIFACT_DIR, tmp))
        files = []
        wanted = BEST_DELTA if ladder is None else f"ladder_{ladder}.safetensors"
        for source in sorted(local.rglob(wanted)):
            target = out / source.relative_to(local)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
            files.append(target)
    metrics = run.data.metrics
    if ladder is not None:
        if not files:
            raise TrackingError(f"run {run_id} holds no sparsity-ladder delta 1/{ladder}: pick "
                                "a fraction the front lists for this trial (1/2, 1/4, ...)")
        return Exported(run_id, files, metrics.get(f"ladder_{ladder}/target_acc"),
                        metrics.get(f"ladder_{ladder}/stored_params"))
    # The best epoch's size: the delta exported is that epoch's, not the last one's.
    stored = metrics.get("best_epoch_stored_params", metrics.get("stored_params"))
    return Exported(run_id, files, metrics.get("target_acc"), stored)
