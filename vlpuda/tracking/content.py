"""What goes into MLflow: names of tags and artifacts, and which result keys become metrics.

Pure functions of Tune results and configs (no MLflow calls), shared by the live Tune callback and
by `vlpuda sync`, so a back-filled run holds exactly what a live one would.

Only numbers that mean something are metrics: the metrics contract of the training loop
(`target_acc`, `target_acc_last`, `stored_params`, `delta_bytes`, `proxy_*`, ...) and each task's
copy `<task>/<name>` in multi-task searches. Tune's bookkeeping (pids, timestamps, `config/*`,
`done`, the trial id) is left out: it clutters the UI's charts and parallel-coordinates plots.
The step of every metric is the training iteration.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from mlflow.entities import Metric

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
BEST_DELTA = "best_delta.safetensors"
FRONT_DIR = "pareto"
HYPERVOLUME = "hypervolume"

# The training loop's per-epoch metrics worth a chart (loop.py's docstring is the contract).
RESULT_METRICS = frozenset({
    "target_acc", "target_acc_last", "target_acc_class_mean", "target_acc_clip", "stored_params",
    "delta_bytes", "changed_params", "changed_fraction", "best_epoch", "epoch", "loss", "lr",
    "seconds_per_iteration", "peak_gpu_memory_gib", "target_acc_selected", "target_acc_holdout",
    "target_acc_holdout_best", "target_acc_class_mean_best", "eval_seconds", "mixval_cost_ratio",
})
PROXY_PREFIX = "proxy_"
# The step of each metric; Tune's own counter is the fallback for results without it.
STEP_KEYS = ("iteration", "training_iteration")


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
    """The row of the epoch that holds the best target accuracy (the delta users deploy)."""
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
