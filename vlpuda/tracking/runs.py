"""Parent and child runs: found again by their tags, created once, filled in without duplicates.

Every write here is idempotent, because the same trial may be logged live by the Tune callback,
again after a resume, and once more by `vlpuda sync`:

* runs are found by tags (`vlpuda.search` on the parent, `vlpuda.trial_id` on children) before one
  is created;
* params already on a run are not logged again (MLflow refuses a changed param anyway);
* a metric step already in a run's history is not logged again;
* the delta artifact is uploaded only when the run has none.

Only `MlflowClient` is used (never the fluent `mlflow.start_run` API), so nothing depends on a
process-global active run, and any number of runs can be written in any order.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Mapping
from itertools import zip_longest
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag, ViewType

from vlpuda.naming import TrialNumbers, finished_run_name, trial_label
from vlpuda.objectives import trial_outcome
from vlpuda.tracking.content import (
    DELTA_ARTIFACT_DIR,
    TAG_KIND,
    TAG_OPTUNA_TRIAL,
    TAG_PARENT,
    TAG_RUN_DIR,
    TAG_RUN_NAME,
    TAG_SEARCH,
    TAG_STATE,
    TAG_STOPPED_BY,
    TAG_STUDY,
    TAG_TASKS,
    TAG_TRIAL,
    SearchInfo,
    flat_params,
    result_metrics,
    result_step,
    result_timestamp_ms,
    summary_metrics,
)
from vlpuda.tracking.where import Destination
from vlpuda.tunefiles import fetch_best_deltas

# The experiment tag MLflow 3's UI reads to pick its mode: without it an experiment with no
# runs' models is taken for a GenAI one and opens on traces instead of the runs table.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# MLflow's per-request limits for log_batch.
MAX_PARAMS, MAX_METRICS, MAX_TAGS = 100, 1000, 100
# Set last when a child run is complete: the number of results it holds. A back-fill that finds
# the count it would log skips the run's histories altogether.
TAG_LOGGED = "vlpuda.logged_results"
TERMINAL = {RunStatus.to_string(s) for s in (RunStatus.FINISHED, RunStatus.FAILED,
                                             RunStatus.KILLED)}


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def sql_quote(value: str) -> str:
    """A value for a single-quoted string in an MLflow search filter."""
    return value.replace("'", "\\'")


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of the named experiment, created (with the artifact location) if missing and
    restored if it was deleted (a deleted name cannot be created again); marked as a model
    training experiment unless someone chose its kind already."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location,
                                        tags={TAG_EXPERIMENT_KIND: MODEL_TRAINING_KIND})
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if TAG_EXPERIMENT_KIND not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND,
                                  MODEL_TRAINING_KIND)
    return experiment.experiment_id


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """Every active run matching the filter (search_runs pages at 1000)."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def log_new_params(client: MlflowClient, run: Run, params: Mapping[str, str]) -> int:
    """Log the params the run does not have yet; returns how many were logged."""
    new = [Param(k, v) for k, v in params.items() if k not in run.data.params]
    for chunk in _chunks(new, MAX_PARAMS):
        client.log_batch(run.info.run_id, params=chunk)
    return len(new)


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str],
             current: Mapping[str, str] | None = None) -> None:
    """Set the tags whose value differs from `current` (all of them when it is None)."""
    changed = [RunTag(k, str(v)) for k, v in tags.items()
               if current is None or current.get(k) != str(v)]
    for chunk in _chunks(changed, MAX_TAGS):
        client.log_batch(run_id, tags=chunk)


class Recorder:
    """Writes one search run (a parent and its trials) to one MLflow experiment.

    Args:
        client: a client for the destination.
        info: the search.
        dest: where it logs (for the experiment's artifact location).
    """

    def __init__(self, client: MlflowClient, info: SearchInfo, dest: Destination) -> None:
        self.client, self.info, self.dest = client, info, dest
        self.experiment_id = ensure_experiment(client, info.experiment, dest.artifact_location)
        self.parent_id: str | None = None
        self.parent_created = False  # whether open_parent made the parent (or found it)
        self.children: dict[str, Run] = {}  # Tune trial id -> run, as last read or created
        self.numbers = TrialNumbers(info.storage, info.study)
        self._steps: dict[str, dict[str, set[int]]] = {}  # run id -> metric -> steps logged
        self._created: set[str] = set()  # runs made here: nothing to look up on them

    # ---- the parent ---------------------------------------------------------------------------
    def open_parent(self) -> str:
        """Find the search's parent run (by its tag) or create it; log what it lacks."""
        found = search_all(self.client, self.experiment_id,
                           f"tags.`{TAG_SEARCH}` = '{sql_quote(self.info.key)}' "
                           f"and tags.`{TAG_KIND}` = 'search'")
        if found:
            run = min(found, key=lambda r: r.info.start_time or 0)
            # Only the tags it lacks: the commit and versions that started the search stay.
            missing = {k: v for k, v in self.info.tags.items() if k not in run.data.tags}
            set_tags(self.client, run.info.run_id, missing)
        else:
            run = self.client.create_run(self.experiment_id, tags=self.info.tags,
                                         run_name=self.info.name)
            self.parent_created = True
        log_new_params(self.client, run, self.info.params)
        self.parent_id = run.info.run_id
        self._read_children()
        return self.parent_id

    def _read_children(self) -> None:
        runs = search_all(self.client, self.experiment_id,
                          f"tags.`{TAG_PARENT}` = '{self.parent_id}'")
        for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):
            trial_id = run.data.tags.get(TAG_TRIAL)
            if trial_id:
                self.children[trial_id] = run  # the oldest wins if a duplicate ever slipped in

    def mark_parent(self, status: str) -> None:
        """Set the parent's status (once: a repeated finish keeps the first end time)."""
        run = self.client.get_run(self.parent_id)
        if run.info.status != status:
            self.client.set_terminated(self.parent_id, status)

    # ---- children -----------------------------------------------------------------------------
    def child_tags(self, trial_id: str, number: int | None) -> dict[str, str]:
        tags = {
            TAG_KIND: "trial",
            TAG_TRIAL: trial_id,
            TAG_SEARCH: self.info.key,
            TAG_STUDY: self.info.study,
            TAG_RUN_DIR: self.info.run_dir,
            TAG_PARENT: self.parent_id,
            TAG_RUN_NAME: trial_label(number, trial_id),
            TAG_TASKS: ",".join(self.info.tasks),
        }
        if number is not None:
            tags[TAG_OPTUNA_TRIAL] = str(number)
        return tags

    def child(self, trial_id: str, config: Mapping[str, Any], number: int | None = None,
              start_ms: int | None = None) -> Run:
        """The trial's child run, found or created, with its params (the trial's config).

        Args:
            number: the trial's Optuna number; looked up in the study when None.
        """
        run = self.children.get(trial_id)
        if number is None:
            number = self.numbers.number(trial_id)
        tags = self.child_tags(trial_id, number)
        params = flat_params(config)
        if run is None:
            run = self.client.create_run(self.experiment_id, start_time=start_ms, tags=tags,
                                         run_name=tags[TAG_RUN_NAME])
            self._steps[run.info.run_id] = {}  # new: nothing logged yet, no need to ask
            self._created.add(run.info.run_id)
            log_new_params(self.client, run, params)
            run.data.params.update(params)  # as the store now has them, without asking again
        else:
            # A finished run keeps the name that gives its result (same label, longer name).
            if run.data.tags.get(TAG_RUN_NAME, "").startswith(f"{tags[TAG_RUN_NAME]} · "):
                del tags[TAG_RUN_NAME]
            set_tags(self.client, run.info.run_id, tags, run.data.tags)
            log_new_params(self.client, run, params)
        self.children[trial_id] = run
        return run

    def _logged_steps(self, run: Run, keys: set[str]) -> dict[str, set[int]]:
        """Steps already in the run's histories, read once per run and metric."""
        known = self._steps.setdefault(run.info.run_id, {})
        for key in keys - known.keys():
            if key in run.data.metrics:
                history = self.client.get_metric_history(run.info.run_id, key)
                known[key] = {m.step for m in history}
            else:
                known[key] = set()
        return known

    def log_metrics(self, run: Run, metrics: list[Metric],
                    tags: Mapping[str, str] | None = None) -> int:
        """Log the metrics whose (key, step) the run does not hold yet, and the tags whose value
        differs, in as few requests as MLflow's limits allow; returns how many metrics."""
        known = self._logged_steps(run, {m.key for m in metrics})
        new = [m for m in metrics if m.step not in known[m.key]]
        changed = [RunTag(k, str(v)) for k, v in (tags or {}).items()
                   if run.data.tags.get(k) != str(v)]
        for batch_metrics, batch_tags in zip_longest(_chunks(new, MAX_METRICS),
                                                     _chunks(changed, MAX_TAGS), fillvalue=[]):
            self.client.log_batch(run.info.run_id, metrics=batch_metrics, tags=batch_tags)
        for m in new:
            known[m.key].add(m.step)
        return len(new)

    def log_results(self, run: Run, rows: list[Mapping[str, Any]]) -> int:
        """Each Tune result's metrics, stepped by training iteration."""
        now = time.time()
        metrics = [m for row in rows for m in result_metrics(row, self.info.tasks, now)]
        return self.log_metrics(run, metrics)

    def is_complete(self, run: Run, results: int) -> bool:
        """Whether a child already holds everything a trial with `results` results would log."""
        return (run.info.status in TERMINAL
                and run.data.tags.get(TAG_LOGGED) == str(results))

    def log_delta(self, run: Run, checkpoint: str | None) -> bool:
        """Upload the trial's best delta(s) under `delta/`, unless the run has them already."""
        if not checkpoint:
            return False
        if run.info.run_id not in self._created and \
                self.client.list_artifacts(run.info.run_id, DELTA_ARTIFACT_DIR):
            return False
        with tempfile.TemporaryDirectory(prefix="vlpuda-delta-") as tmp:
            files = fetch_best_deltas(checkpoint, list(self.info.tasks), Path(tmp))
            if not files:
                return False
            self.client.log_artifacts(run.info.run_id, tmp, DELTA_ARTIFACT_DIR)
        return True

    def end_child(self, run: Run, rows: list[Mapping[str, Any]], error: bool,
                  outcome: tuple[str, str] | None = None) -> bool:
        """Close a finished trial's run: summary metrics, the best delta, its state, status.
        Returns whether the delta was uploaded now.

        Args:
            run: the child run.
            rows: every result the trial reported, in order.
            error: whether the trial errored.
            outcome: (state, reason) as the study recorded it; derived from the last result
                when the study has no word on it.
        """
        last = rows[-1] if rows else {}
        uploaded = self.log_delta(run, last.get("checkpoint_path"))
        if outcome is None:
            state, reason = trial_outcome(last, error, self.info.epochs, self.info.budget)
            outcome = (state.name, reason)
        tags = {TAG_STATE: outcome[0]}
        if outcome[0] != "COMPLETE":
            tags[TAG_STOPPED_BY] = outcome[1]
        trial_id = run.data.tags.get(TAG_TRIAL, "")
        label = trial_label(self.numbers.number(trial_id), trial_id)
        tags[TAG_RUN_NAME] = finished_run_name(label, outcome[0], outcome[1], last,
                                               self.info.objectives)
        summary = []
        if rows:
            stamp = result_timestamp_ms(last, time.time())
            summary = [Metric(k, v, stamp, result_step(last))
                       for k, v in summary_metrics(rows, self.info.tasks).items()]
        # One request for the summary metrics and the state tags.
        self.log_metrics(run, summary, tags)
        if run.info.status not in TERMINAL:
            status = RunStatus.FAILED if error else RunStatus.FINISHED
            end = result_timestamp_ms(last, time.time()) if rows else None
            self.client.set_terminated(run.info.run_id, RunStatus.to_string(status), end)
        # Last: only a run that got this far counts as complete for a later back-fill.
        self.client.set_tag(run.info.run_id, TAG_LOGGED, str(len(rows)))
        return uploaded
