"""The front on the parent run: table, CSV and figure, hypervolume history, pareto tags.

MLflow has no Pareto view, so the search brings its own (research/anchors.md D3 item 10):

* `pareto/front.json` (an MLflow table: the UI shows it on the run's artifacts page),
  `pareto/front.csv` and `pareto/front.png` (accuracy against stored parameters, log x axis),
  the same figure as the run's `pareto_front` image and `pareto/front.html`, Optuna's
  interactive Plotly views (see views.py);
  for a multi-task search also `pareto/<task>/...` from each task's own accuracy and storage;
* `hypervolume` with step = the number of finished trials, so its chart shows the search
  converging;
* children tagged `pareto` (true/false) and `pareto_rank` (0 on the front, 1 on the front of
  the rest, ...), so the UI's own scatter chart and run filters do the rest.

Everything is computed from the Optuna study (the same front `vlpuda pareto` prints) and Tune's
result files; nothing depends on what MLflow already holds, so a back-fill writes the same.
"""

from __future__ import annotations

import csv
import io
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from mlflow.entities import Metric, Run
from optuna.trial import FrozenTrial, TrialState

from vlpuda.search.front import (
    Front,
    complete_trials,
    front_columns,
    front_of,
    front_rows,
    ladder_candidates,
)
from vlpuda.search.pareto import default_reference, hypervolume_2d, non_dominated_ranks
from vlpuda.search.settings import METRICS, MODES
from vlpuda.search.study import STOP_DETAIL, STOP_REASON, TUNE_TRIAL_ID
from vlpuda.tracking.content import (
    FRONT_DIR,
    HYPERVOLUME,
    TAG_KIND,
    TAG_OPTUNA_TRIAL,
    TAG_PARETO,
    TAG_PARETO_RANK,
    TAG_STATE,
    TAG_STOPPED_BY,
    TAG_STUDY,
    TAG_TRIAL,
)
from vlpuda.tracking.figure import TrialPoint, front_figure
from vlpuda.tracking.naming import trial_label
from vlpuda.tracking.references import paper_references
from vlpuda.tracking.runs import Recorder, sql_quote, search_all, set_tags
from vlpuda.tracking.tunefiles import TuneTrial
from vlpuda.tracking.views import front_html, log_front_image

RUN_ID_COLUMN = "mlflow_run_id"


@dataclass
class FrontSummary:
    """What was written to the parent run."""

    front_size: int
    complete: int
    finished: int
    hypervolume: float
    artifacts: list[str]


def _millis(trial: FrozenTrial) -> int:
    when = trial.datetime_complete or trial.datetime_start
    return int(when.timestamp() * 1000) if when else 0


def finished_in_order(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """A study's finished trials in the order they finished."""
    done = [t for t in trials if t.state.is_finished()]
    return sorted(done, key=lambda t: (_millis(t), t.number))


def hypervolume_steps(finished: list[FrozenTrial], reference: tuple[float, ...] | None,
                      metrics: tuple[str, ...] = METRICS) -> list[Metric]:
    """The front's hypervolume after each finished trial (step k = k trials finished).

    One reference for every step (the final front's), so the curve only rises when the front
    improves; pruned and failed trials repeat the previous value.
    """
    steps, complete, value = [], [], 0.0
    for k, trial in enumerate(finished, start=1):
        if trial.state == TrialState.COMPLETE and trial.values is not None:
            complete.append(trial.values)
            # Its sparsity-ladder points count as the front counts them (search.front).
            complete += [[p[m] for m in metrics] for _, p in ladder_candidates([trial], metrics)]
            value = hypervolume_2d(np.array(complete), MODES, reference) if reference else 0.0
        steps.append(Metric(HYPERVOLUME, float(value), _millis(trial), k))
    return steps


def study_children(recorder: Recorder) -> dict[str, Run]:
    """Child runs of every run of this study in the experiment (an extended study has one
    parent per search run), by Tune trial id."""
    runs = search_all(recorder.client, recorder.experiment_id,
                      f"tags.`{TAG_STUDY}` = '{sql_quote(recorder.info.study)}' "
                      f"and tags.`{TAG_KIND}` = 'trial'")
    children: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):
        children[run.data.tags.get(TAG_TRIAL, "")] = run
    return children


# ---- artifacts --------------------------------------------------------------------------------


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def put_table(recorder: Recorder, rows: list[dict[str, Any]], columns: list[str],
              artifact_file: str) -> None:
    """Log rows as an MLflow table, replacing an earlier version of it.

    `log_table` appends to a table that already exists, which would repeat every row on a
    second finish or a back-fill; in that case the file is rewritten in the same format
    (pandas' "split" orientation, which `mlflow.load_table` reads).
    """
    import pandas as pd

    client, run_id = recorder.client, recorder.parent_id
    frame = pd.DataFrame(rows, columns=columns)
    folder = posixpath.dirname(artifact_file)
    existing = {f.path for f in client.list_artifacts(run_id, folder)}
    if artifact_file not in existing:
        client.log_table(run_id, frame, artifact_file)
        return
    with tempfile.TemporaryDirectory(prefix="vlpuda-table-") as tmp:
        path = Path(tmp) / posixpath.basename(artifact_file)
        frame.to_json(path, orient="split", index=False, date_format="iso")
        client.log_artifact(run_id, str(path), folder)


def _write_front(recorder: Recorder, folder: str, rows: list[dict[str, Any]],
                 columns: list[str], points: list[TrialPoint], title: str,
                 references: list, image_step: int | None = None) -> list[str]:
    """The front's table, CSV and figure (also as the run's image at `image_step`, if any)."""
    client, run_id = recorder.client, recorder.parent_id
    table, table_csv, figure = (f"{folder}/front.json", f"{folder}/front.csv",
                                f"{folder}/front.png")
    put_table(recorder, rows, columns, table)
    client.log_text(run_id, _csv_text(rows, columns), table_csv)
    fig = front_figure(points, references, title)
    client.log_figure(run_id, fig, figure, save_kwargs={"dpi": 120})
    if image_step is not None:
        log_front_image(client, run_id, fig, image_step)
    return [table, table_csv, figure]


# ---- the search's front -----------------------------------------------------------------------


def _front_columns(front: Front) -> list[str]:
    return [*front_columns(front), TUNE_TRIAL_ID, RUN_ID_COLUMN, "checkpoint_path"]


def _title(recorder: Recorder, task: str | None, complete: int, size: int) -> str:
    info = recorder.info
    what = task or ", ".join(f"{s} -> {t}" for s, t in info.task_pairs)
    return (f"{info.name}: {what} ({info.model}); {size} of {complete} complete trials "
            "on the front")


def _points(trials: list[FrozenTrial], values: np.ndarray, mask: np.ndarray
            ) -> list[TrialPoint]:
    return [TrialPoint(t.number, float(v[0]), float(v[1]), bool(m))
            for t, v, m in zip(trials, values, mask)]


def ladder_figure_points(front: Front, true_accuracy: bool = True) -> list[TrialPoint]:
    """The front's sparsity-ladder points, labelled by parent trial and fraction ("t07 @1/4"),
    at their true accuracy (or, for an unlabeled target, their objective's score)."""
    first = "target_acc" if true_accuracy else front.metrics[0]
    return [TrialPoint(t.number, float(p[first]), float(p[front.metrics[1]]), True,
                       f"{trial_label(t.number)} @1/{round(1 / p['fraction'])}")
            for t, p in front.derived]


def _tag_children(recorder: Recorder, trials: list[FrozenTrial], complete: list[FrozenTrial],
                  ranks: np.ndarray, children: dict[str, Run]) -> None:
    rank_of = {t.number: int(r) for t, r in zip(complete, ranks)}
    # In number order, so a rerun (a later study trial for the same Tune trial) has the last word.
    for trial in trials:
        run = children.get(str(trial.user_attrs.get(TUNE_TRIAL_ID)))
        if run is None or not trial.state.is_finished():
            continue
        tags = {TAG_OPTUNA_TRIAL: str(trial.number), TAG_STATE: trial.state.name,
                TAG_PARETO: "true" if rank_of.get(trial.number) == 0 else "false"}
        if trial.number in rank_of:
            tags[TAG_PARETO_RANK] = str(rank_of[trial.number])
        elif trial.user_attrs.get(STOP_REASON):
            tags[TAG_STOPPED_BY] = str(trial.user_attrs.get(STOP_DETAIL)
                                       or trial.user_attrs[STOP_REASON])
        set_tags(recorder.client, run.info.run_id, tags, run.data.tags)


def log_search_front(recorder: Recorder, study: optuna.Study,
                     tune_trials: dict[str, TuneTrial]) -> FrontSummary:
    """Write the study's front, hypervolume history and pareto tags (see module docstring)."""
    info, client = recorder.info, recorder.client
    trials = study.get_trials(deepcopy=False)  # read once: an RDB storage reads it each time
    front = front_of(trials)
    finished = finished_in_order(trials)
    complete = complete_trials(trials)
    children = study_children(recorder)
    artifacts: list[str] = []

    values = np.array([t.values for t in complete], dtype=float).reshape(-1, 2)
    ranks = non_dominated_ranks(values, MODES)
    if complete:
        rows = [{**row, RUN_ID_COLUMN: _run_id(children, row.get(TUNE_TRIAL_ID))}
                for row in front_rows(front)]
        # The figure shows true accuracy wherever the target has labels (for a label-free
        # objective: each trial's kept epoch); the paper's points only on that scale.
        truth = (values if front.metrics[0] == METRICS[0] else _selected_accuracy(complete, values))
        points = (_points(complete, truth if truth is not None else values, ranks == 0)
                  + ladder_figure_points(front, true_accuracy=truth is not None))
        references = (paper_references(info.benchmark, info.model, info.task_pairs)
                      if truth is not None else [])
        artifacts += _write_front(recorder, FRONT_DIR, rows, _front_columns(front), points,
                                  _title(recorder, None, len(complete), len(front.trials)),
                                  references, image_step=len(finished))
        client.log_text(recorder.parent_id,
                        front_html(study, front.reference,
                                   _title(recorder, None, len(complete), len(front.trials)),
                                   info.objectives), f"{FRONT_DIR}/front.html")
        artifacts.append(f"{FRONT_DIR}/front.html")
    client.log_dict(recorder.parent_id, {
        "hypervolume": front.hypervolume,
        "reference": list(front.reference) if front.reference else None,
        "front": front.numbers,
        "ladder_points": [[t.number, p["fraction"]] for t, p in front.derived],
        "states": dict(front.states),
        # Why each pruned trial stopped (the scheduler's rung and rank, or the budget).
        "pruned": {str(t.number): t.user_attrs.get(STOP_DETAIL) or t.user_attrs.get(STOP_REASON)
                   for t in trials if t.state == TrialState.PRUNED},
        "objectives": list(front.metrics),
        **({"selection_gap": front.gap.as_dict()} if front.gap else {}),
    }, f"{FRONT_DIR}/summary.json")
    artifacts.append(f"{FRONT_DIR}/summary.json")

    parent = client.get_run(recorder.parent_id)
    metrics = hypervolume_steps(finished, front.reference, front.metrics)
    if finished:
        last = metrics[-1]
        counts = {"front_size": len(front.trials), "complete_trials": len(complete),
                  "finished_trials": len(finished), **(front.gap.as_dict() if front.gap else {})}
        metrics += [Metric(k, float(v), last.timestamp, last.step) for k, v in counts.items()]
    if len(info.tasks) > 1:
        metrics += _task_fronts(recorder, complete, tune_trials, children, finished, artifacts)
    recorder.log_metrics(parent, metrics)
    _tag_children(recorder, trials, complete, ranks, children)
    return FrontSummary(len(front.trials), len(complete), len(finished), front.hypervolume,
                        artifacts)


def _selected_accuracy(complete: list[FrozenTrial], values: np.ndarray) -> np.ndarray | None:
    """(true accuracy of the kept epoch, stored_params) per trial, or None without labels."""
    selected = [t.user_attrs.get("target_acc_selected") for t in complete]
    if any(a is None for a in selected):
        return None
    return np.column_stack([np.array(selected, dtype=float), values[:, 1]])


def _run_id(children: dict[str, Run], trial_id: Any) -> str | None:
    run = children.get(str(trial_id))
    return run.info.run_id if run else None


# ---- per-task fronts of a multi-task search ---------------------------------------------------


def _task_values(task: str, complete: list[FrozenTrial], tune_trials: dict[str, TuneTrial]
                 ) -> tuple[list[FrozenTrial], list[dict[str, Any]]]:
    """Complete trials with this task's final accuracy and storage, and those results."""
    kept, finals = [], []
    for trial in complete:
        tune = tune_trials.get(str(trial.user_attrs.get(TUNE_TRIAL_ID)))
        last = tune.last if tune else {}
        if last.get(f"{task}/target_acc") is not None and \
                last.get(f"{task}/stored_params") is not None:
            kept.append(trial)
            finals.append(last)
    return kept, finals


def _task_fronts(recorder: Recorder, complete: list[FrozenTrial],
                 tune_trials: dict[str, TuneTrial], children: dict[str, Run],
                 finished: list[FrozenTrial], artifacts: list[str]) -> list[Metric]:
    """Each task's own front (its accuracy against its stored parameters)."""
    info, metrics = recorder.info, []
    for task, pair in zip(info.tasks, info.task_pairs):
        trials, finals = _task_values(task, complete, tune_trials)
        if not trials:
            continue
        values = np.array([[f[f"{task}/target_acc"], f[f"{task}/stored_params"]]
                           for f in finals], dtype=float)
        ranks = non_dominated_ranks(values, MODES)
        names = sorted({n for t in trials for n in t.params})
        rows = []
        for trial, final, rank in zip(trials, finals, ranks):
            if rank != 0:
                continue
            tune_id = trial.user_attrs.get(TUNE_TRIAL_ID)
            rows.append({"trial": trial.number, "target_acc": final[f"{task}/target_acc"],
                         "stored_params": int(final[f"{task}/stored_params"]),
                         "target_acc_last": final.get(f"{task}/target_acc_last"),
                         "target_acc_class_mean": final.get(f"{task}/target_acc_class_mean"),
                         **{n: trial.params.get(n) for n in names}, TUNE_TRIAL_ID: tune_id,
                         RUN_ID_COLUMN: _run_id(children, tune_id)})
        rows.sort(key=lambda r: (-r["target_acc"], r["stored_params"]))
        columns = ["trial", *METRICS, "target_acc_last", "target_acc_class_mean", *names,
                   TUNE_TRIAL_ID, RUN_ID_COLUMN]
        artifacts += _write_front(recorder, f"{FRONT_DIR}/{task}", rows, columns,
                                  _points(trials, values, ranks == 0),
                                  _title(recorder, task, len(trials), len(rows)),
                                  paper_references(info.benchmark, info.model, [pair]))
        reference = default_reference(values, MODES)
        value = hypervolume_2d(values[ranks == 0], MODES, reference)
        last = finished[-1] if finished else None
        metrics.append(Metric(f"{task}/{HYPERVOLUME}", float(value),
                              _millis(last) if last else 0, len(finished)))
        for trial, rank in zip(trials, ranks):
            run = children.get(str(trial.user_attrs.get(TUNE_TRIAL_ID)))
            if run is not None:
                set_tags(recorder.client, run.info.run_id,
                         {f"{TAG_PARETO}/{task}": "true" if rank == 0 else "false"},
                         run.data.tags)
    return metrics
