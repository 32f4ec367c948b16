"""Back-fill and export: MLflow filled in from a search's own storage, and a trial's delta out.

`vlpuda sync RUN_DIR`: when the tracking server was down at the start or went down during a
search, the search carried on and its results stayed in Tune's experiment folders and the Optuna
study. Sync reads them and writes what MLflow lacks: the parent run of each search run (found by
its `vlpuda.search` tag), one child per trial (found by `vlpuda.trial_id`), their metric histories
(only the steps not yet logged), best deltas, and the front on the latest parent. Running it again
changes nothing. The search reads the run dir's manifest and plan (vlpuda.search.tracked) and
passes the study, the parents' SearchInfo and the planned destination in here.

`vlpuda export`: a child run holds `delta/best_delta.safetensors` (a multi-task trial: one per task
folder), the delta of the epoch the trial's `selection` metric kept (the search's objective:
`target_acc`, the oracle, or a label-free validator;
docs/method.md#evaluation-and-epoch-selection). Writing it into the base model
(`vlpuda evaluate --checkpoint DIR/best_delta.safetensors`) reproduces that epoch's scores.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from vlpuda.layout import BEST_DELTA_FILE, ladder_file
from vlpuda.objectives import STOP_REASON, TUNE_TRIAL_ID
from vlpuda.tracking.content import DELTA_ARTIFACT_DIR, TAG_TRIAL, SearchInfo
from vlpuda.tracking.front import FrontSummary, log_search_front
from vlpuda.tracking.runs import Recorder
from vlpuda.tracking.where import (
    TrackingError,
    TrackingPlan,
    given_destination,
    limit_http_retries,
    read_destination,
    resolve_destination,
    server_problem,
    ui_command,
    write_destination,
)
from vlpuda.tunefiles import TuneTrial, experiments, read_experiment

@dataclass
class SyncSummary:
    """What a sync found and wrote."""

    tracking_uri: str
    parents_created: int = 0
    children_created: int = 0
    children_complete: int = 0  # already held everything: left alone
    metrics_logged: int = 0
    deltas_logged: int = 0
    trials: int = 0
    front: FrontSummary | None = None
    parent_ids: list[str] = field(default_factory=list)

    def describe(self) -> str:
        front = (f"front of {self.front.front_size} trials on parent run {self.parent_ids[-1]}"
                 if self.front and self.parent_ids else "no front (no parent run)")
        return (f"synced {self.trials} trials to {self.tracking_uri}: "
                f"{self.parents_created} parent run(s) and {self.children_created} trial run(s) "
                f"created, {self.children_complete} already complete, {self.metrics_logged} "
                f"metric values and {self.deltas_logged} delta(s) logged; {front}")


def _outcomes(study) -> dict[str, tuple[str, str]]:
    """(state, reason) of each finished study trial, by Tune trial id (a rerun has the last
    word)."""
    outcomes = {}
    for trial in study.get_trials(deepcopy=False):
        tune_id = trial.user_attrs.get(TUNE_TRIAL_ID)
        if tune_id is not None and trial.state.is_finished():
            outcomes[str(tune_id)] = (trial.state.name, str(trial.user_attrs.get(STOP_REASON, "")))
    return outcomes


def _sync_trial(recorder: Recorder, trial: TuneTrial, outcome: tuple[str, str] | None,
                summary: SyncSummary) -> None:
    summary.trials += 1
    existing = recorder.children.get(trial.trial_id)
    if existing is not None and trial.finished and recorder.is_complete(existing, len(trial.rows)):
        summary.children_complete += 1
        return
    if existing is None:
        summary.children_created += 1
    first = trial.rows[0] if trial.rows else {}
    start = None
    if "timestamp" in first:
        start = int((first["timestamp"] - float(first.get("time_total_s", 0.0))) * 1000)
    run = recorder.child(trial.trial_id, trial.config, None, start)
    summary.metrics_logged += recorder.log_results(run, trial.rows)
    if trial.finished:
        summary.deltas_logged += int(recorder.end_child(run, trial.rows, trial.errored, outcome))


def _destination(run_dir: Path, planned: TrackingPlan, tracking_uri: str | None):
    """Where to write: --tracking-uri, else where the search logged (tracking.json), else where
    its plan says; and whether the run dir had recorded one."""
    recorded = read_destination(run_dir)
    if tracking_uri:
        return resolve_destination(tracking_uri, run_dir), recorded
    if recorded is not None:
        return recorded, recorded
    if planned.destination is None:
        raise TrackingError(planned.problem or "no tracking destination")
    return planned.destination, recorded


def sync_run_dir(run_dir: Path, study: optuna.Study, ray_storage: str,
                 info_of: Callable[[str], SearchInfo], planned: TrackingPlan,
                 tracking_uri: str | None = None, finished: bool = False,
                 latest: str | None = None, log: Callable[[str], None] = print) -> SyncSummary:
    """Bring MLflow up to date with a search's run directory.

    Args:
        run_dir: the search's run directory (absolute).
        study: the search's Optuna study.
        ray_storage: Tune's storage: every experiment under it is one search run.
        info_of: the SearchInfo of the search run named by a Tune experiment.
        planned: where the search's plan logs (its preset's tracking section, resolved).
        tracking_uri: where to write instead; default: where the search logged (tracking.json),
            else `planned`.
        finished: whether the manifest says the search finished.
        latest: the manifest's (latest) Tune experiment: earlier ones are finished.
        log: where progress lines go.

    Raises:
        TrackingError: when the tracking server cannot be reached.
    """
    from mlflow import MlflowClient

    dest, recorded = _destination(run_dir, planned, tracking_uri)
    limit_http_retries()
    problem = server_problem(dest)
    if problem is not None:
        raise TrackingError(f"{problem}; start the tracking server (or pass --tracking-uri) "
                            f"and run `vlpuda sync {run_dir}` again")
    if recorded is None:
        write_destination(run_dir, dest)
    client = MlflowClient(dest.uri)
    outcomes = _outcomes(study)
    summary = SyncSummary(dest.uri)
    names = experiments(ray_storage)
    last_results: dict[str, dict] = {}
    recorder = None
    for name in names:
        recorder = Recorder(client, info_of(name), dest)
        recorder.open_parent()
        summary.parent_ids.append(recorder.parent_id)
        summary.parents_created += int(recorder.parent_created)
        for trial in read_experiment(ray_storage, name):
            last_results[trial.trial_id] = trial.last
            _sync_trial(recorder, trial, outcomes.get(trial.trial_id), summary)
        if finished or name != latest:
            recorder.mark_parent("FINISHED")
    if recorder is not None:
        # The front is the study's: it goes on the latest search run's parent.
        summary.front = log_search_front(recorder, study, last_results)
    log(summary.describe())
    log(f"open the UI with: {ui_command(dest)}")
    return summary


# ---- export -----------------------------------------------------------------------------------


@dataclass
class Exported:
    """The files an export wrote and what the run reported for them."""

    run_id: str
    files: list[Path]
    target_acc: float | None
    stored_params: float | None  # of the best epoch, whose delta this is


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

    dest = given_destination(tracking_uri)
    uri = dest.uri
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
        wanted = BEST_DELTA_FILE if ladder is None else ladder_file(ladder)
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
