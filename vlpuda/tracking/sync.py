"""`vlpuda sync RUN_DIR`: fill MLflow in from a search's own storage.

When the tracking server was down at the start or went down during a search, the search carried
on and its results stayed in Tune's experiment folders and the Optuna study. Sync reads them and
writes what MLflow lacks: the parent run of each search run (found by its `vlpuda.search` tag),
one child per trial (found by `vlpuda.trial_id`), their metric histories (only the steps not yet
logged), best deltas, and the front on the latest parent. Running it again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlpuda.search.settings import plan_from_manifest
from vlpuda.search.study import (
    SEARCH_KEYS,
    STOP_REASON,
    TUNE_TRIAL_ID,
    load_study,
    read_manifest,
)
from vlpuda.tracking.describe import search_info
from vlpuda.tracking.destination import (
    TrackingError,
    limit_http_retries,
    read_destination,
    resolve_destination,
    server_problem,
    ui_command,
    write_destination,
)
from vlpuda.tracking.guard import Log
from vlpuda.tracking.parent import FrontSummary, log_search_front
from vlpuda.tracking.runs import Recorder
from vlpuda.tracking.settings import tracking_settings
from vlpuda.tracking.tunefiles import TuneTrial, experiments, read_experiment


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


def sync_run_dir(run_dir: str | Path, tracking_uri: str | None = None,
                 experiment: str | None = None, log: Log = print) -> SyncSummary:
    """Bring MLflow up to date with a search's run directory.

    Args:
        run_dir: the search's run directory (it holds search.json).
        tracking_uri: where to write; default: where the search logged (tracking.json), else
            its preset's tracking.uri / MLFLOW_TRACKING_URI, else the run dir's SQLite store.
        experiment: the MLflow experiment; default: the preset's tracking.experiment, else the
            search's name.
        log: where progress lines go.

    Raises:
        TrackingError: when the tracking server cannot be reached.
        VlpudaError: when run_dir is not a search's run directory.
    """
    from mlflow import MlflowClient

    run_dir = Path(run_dir).expanduser().resolve()
    manifest = read_manifest(run_dir, SEARCH_KEYS)
    study = load_study(manifest)  # before anything else: a missing study creates nothing
    # Data paths are not checked: the data may have moved since; only names and settings matter.
    plan = plan_from_manifest(run_dir, manifest, check_paths=False)
    settings = tracking_settings(plan.raw, plan.source)
    experiment = experiment or settings.experiment
    recorded = read_destination(run_dir)
    if tracking_uri or recorded is None:
        dest = resolve_destination(tracking_uri or settings.effective_uri(), run_dir)
    else:
        dest = recorded
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
    names = experiments(plan.ray_storage)
    tune_trials: dict[str, TuneTrial] = {}
    recorder = None
    for name in names:
        recorder = Recorder(client, search_info(plan, name, experiment), dest)
        recorder.open_parent()
        summary.parent_ids.append(recorder.parent_id)
        summary.parents_created += int(recorder.parent_created)
        for trial in read_experiment(plan.ray_storage, name):
            tune_trials[trial.trial_id] = trial
            _sync_trial(recorder, trial, outcomes.get(trial.trial_id), summary)
        if manifest.get("status") == "finished" or name != manifest.get("experiment"):
            recorder.mark_parent("FINISHED")
    if recorder is not None:
        # The front is the study's: it goes on the latest search run's parent.
        summary.front = log_search_front(recorder, study, tune_trials)
    log(summary.describe())
    log(f"open the UI with: {ui_command(dest)}")
    return summary

