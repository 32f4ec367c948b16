"""What goes into MLflow: the search's identity, names of tags and artifacts, which result keys
become metrics.

Pure functions of Tune results and configs (no MLflow calls), shared by the live Tune callback and
by `vlpuda sync`, so a back-filled run holds exactly what a live one would.

`SearchInfo` is small and picklable: the Tune callback carries it into Tune's experiment snapshot,
so a resumed search logs to the same parent run. The search builds it from its validated plan
(vlpuda.search.tracked), the same way for the live search and for `vlpuda sync`, so both find
(or create) the same runs.

Only numbers that mean something are metrics: the metrics contract of the training loop
(`target_acc`, `target_acc_last`, `stored_params`, `delta_bytes`, `proxy_*`, ...) and each task's
copy `<task>/<name>` in multi-task searches. Tune's bookkeeping (pids, timestamps, `config/*`,
`done`, the trial id) is left out: it clutters the UI's charts and parallel-coordinates plots.
The step of every metric is the training iteration.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.entities import Metric

from vlpuda.objectives import METRICS, PROXY_PREFIX, RESULT_METRICS, STEP_KEYS

# Tags that identify runs, so a re-run or a back-fill finds them instead of duplicating them.
TAG_KIND = "vlpuda.kind"  # "search" on a parent, "trial" on a child
TAG_SEARCH = "vlpuda.search"  # "<search name>/<tune experiment>": one parent per search run
TAG_TRIAL = "vlpuda.trial_id"  # Tune's trial id, on children
TAG_STUDY = "vlpuda.study"  # the Optuna study: its trials share one front
TAG_RUN_DIR = "vlpuda.run_dir"
TAG_PARENT = "mlflow.parentRunId"  # the UI nests runs by this tag, across processes
TAG_RUN_NAME = "mlflow.runName"
TAG_NOTE = "mlflow.note.content"
TAG_TASKS = "tasks"
TAG_STATE = "state"  # COMPLETE / PRUNED / FAIL, as the study counts the trial
TAG_STOPPED_BY = "stopped_by"
TAG_PARETO = "pareto"
TAG_PARETO_RANK = "pareto_rank"
TAG_OPTUNA_TRIAL = "optuna_trial"

DELTA_ARTIFACT_DIR = "delta"
FRONT_DIR = "pareto"
HYPERVOLUME = "hypervolume"
# Versions recorded on the parent run: what a result depends on.
PACKAGES = ("vlpuda", "torch", "open_clip_torch", "ray", "optuna", "mlflow")


def is_metric_name(name: str) -> bool:
    """Whether a loop metric name (without a task prefix) is logged."""
    return name in RESULT_METRICS or name.startswith(PROXY_PREFIX)


def is_metric_key(key: str, tasks: Iterable[str] = ()) -> bool:
    """Whether a result key is logged: a contract name, or `<task>/<contract name>`."""
    if "/" not in key:
        return is_metric_name(key)
    task, name = key.split("/", 1)
    return task in set(tasks) and is_metric_name(name)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def result_step(result: Mapping[str, Any]) -> int:
    for key in STEP_KEYS:
        if result.get(key) is not None:
            return int(result[key])
    return 0


def result_timestamp_ms(result: Mapping[str, Any], default_s: float) -> int:
    """The result's own time (Tune stamps every result), so a back-fill logs the same times."""
    return int(float(result.get("timestamp", default_s)) * 1000)


def result_metrics(result: Mapping[str, Any], tasks: Iterable[str], default_time_s: float
                   ) -> list[Metric]:
    """The metrics one Tune result contributes, stepped by its training iteration."""
    tasks = list(tasks)
    step = result_step(result)
    stamp = result_timestamp_ms(result, default_time_s)
    metrics = []
    for key, value in result.items():
        number = _number(value)
        if number is not None and is_metric_key(key, tasks):
            metrics.append(Metric(key, number, stamp, step))
    return metrics


def _task_rows(rows: list[Mapping[str, Any]], prefix: str) -> list[Mapping[str, Any]]:
    """One task's view of multi-task results (`<task>/name` -> `name`); all of them for ""."""
    if not prefix:
        return rows
    return [{k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)} for row in rows]


def _best_row(rows: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The row of the epoch the run kept (`best_epoch`, picked by its selection metric): the
    delta users deploy."""
    best = rows[-1].get("best_epoch")
    if best is None:
        return None
    return next((row for row in rows if row.get("epoch") == best), None)


def summary_metrics(rows: list[Mapping[str, Any]], tasks: Iterable[str]) -> dict[str, float]:
    """Values of the whole trial, beside the last epoch's (the UI shows a metric's last value).

    * `best_epoch_stored_params`, `best_epoch_delta_bytes`: the size of the best epoch's delta,
      the artifact logged with the run (the last epoch's size is in `stored_params`).
    * `best_proxy_*`: the highest value of each label-free proxy over the epochs.
    `target_acc` itself is already the best (oracle) accuracy so far.
    """
    if not rows:
        return {}
    tasks = list(tasks)
    prefixes = [""] + ([f"{t}/" for t in tasks] if len(tasks) > 1 else [])
    summary: dict[str, float] = {}
    for prefix in prefixes:
        task_rows = _task_rows(rows, prefix)
        best = _best_row(task_rows)
        for name in ("stored_params", "delta_bytes"):
            value = _number(best.get(name)) if best else None
            if value is not None:
                summary[f"{prefix}best_epoch_{name}"] = value
        proxies = {k for row in task_rows for k in row if k.startswith(PROXY_PREFIX)}
        for name in sorted(proxies):
            values = [v for row in task_rows if (v := _number(row.get(name))) is not None]
            if values:
                summary[f"{prefix}best_{name}"] = max(values)
    return summary


def param_value(value: Any) -> str:
    """A parameter as MLflow stores it (a string); floats keep every digit."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A config as flat `name -> string` params; nested mappings become `outer.inner`.

    A trial's config is already flat and named like the training config, so its params carry
    exactly the config's names.
    """
    params: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            params.update(flat_params(value, f"{name}."))
        elif value is not None:
            params[name] = param_value(value)
    return params


# ---- the search -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchInfo:
    """One search run as MLflow sees it.

    Attributes:
        key: identifies the parent run: "<search name>/<tune experiment>".
        name: the search's name (the parent run's name).
        experiment: the MLflow experiment (default: the search's name).
        study: the Optuna study name; children of all its runs share one front.
        run_dir: the search's run directory, absolute.
        tasks: task keys as the loop names them (Art_to_Clipart), in the search's order.
        task_pairs: the same tasks as (source, target).
        epochs: the full length of a trial (shorter ones were stopped early).
        budget: the stored-parameter budget, if any.
        benchmark: the config's benchmark (for the paper's reference points).
        model: the open_clip model name.
        params: the parent run's params.
        tags: the parent run's tags.
        storage: the Optuna study's database URL (trial numbers are read from it).
        objectives: the study's two objectives, as result keys.
    """

    key: str
    name: str
    experiment: str
    study: str
    run_dir: str
    tasks: tuple[str, ...]
    task_pairs: tuple[tuple[str, str], ...]
    epochs: int
    budget: int | None
    benchmark: str
    model: str
    params: dict[str, str] = field(default_factory=dict, hash=False)
    tags: dict[str, str] = field(default_factory=dict, hash=False)
    storage: str = ""
    objectives: tuple[str, str] = METRICS


def git_commit() -> str:
    """The commit of the vlpuda checkout, or "unknown" (an installed wheel has none)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else "unknown"


def package_versions() -> dict[str, str]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
