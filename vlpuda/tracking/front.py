"""The front on the parent run: table, CSV and figure, hypervolume history, pareto tags.

MLflow has no Pareto view, so the search brings its own (docs/search.md#mlflow-destination):

* `pareto/front.json` (an MLflow table: the UI shows it on the run's artifacts page),
  `pareto/front.csv` and `pareto/front.png` (accuracy against stored parameters, log x axis),
  the same figure as the run's `pareto_front` image and `pareto/front.html`, Optuna's
  interactive Plotly views in one self-contained page (the Plotly library is inlined: clusters
  and laptops without internet render it too; MLflow's artifact viewer shows HTML);
  for a multi-task search also `pareto/<task>/...` from each task's own accuracy and storage;
* `hypervolume` with step = the number of finished trials, so its chart shows the search
  converging;
* children tagged `pareto` (true/false) and `pareto_rank` (0 on the front, 1 on the front of
  the rest, ...), so the UI's own scatter chart and run filters do the rest.

The figure is also logged as an MLflow *image* under the key `pareto_front`, with step = the
number of finished trials: MLflow 3 shows logged images on the run's overview page and as an image
chart in the experiment's chart view. A step already logged is not logged again.

Everything is computed by vlpuda.front from the Optuna study (the same front `vlpuda pareto`
prints) and Tune's result files; this module only writes it, so nothing depends on what MLflow
already holds, and a back-fill writes the same.
"""

from __future__ import annotations

import html
import io
import posixpath
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from mlflow.entities import Metric, Run
from optuna.trial import FrozenTrial, TrialState

from vlpuda.front.figure import TrialPoint, front_figure, ladder_figure_points, trial_points
from vlpuda.front.references import paper_references
from vlpuda.front.table import csv_text, front_columns
from vlpuda.front.trials import (
    Front,
    TaskFront,
    finished_in_order,
    front_of,
    front_rows,
    hypervolume_steps as hypervolume_values,
    selected_accuracy,
    task_front,
    trial_millis,
    trial_values,
)
from vlpuda.objectives import METRICS, STOP_DETAIL, STOP_REASON, TUNE_TRIAL_ID
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
from vlpuda.tracking.runs import Recorder, search_all, set_tags, sql_quote

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

RUN_ID_COLUMN = "mlflow_run_id"
FRONT_IMAGE_KEY = "pareto_front"
IMAGES_DIR = "images"  # where MlflowClient.log_image files keyed images


@dataclass
class FrontSummary:
    """What was written to the parent run."""

    front_size: int
    complete: int
    finished: int
    hypervolume: float
    artifacts: list[str]


def hypervolume_steps(finished: list[FrozenTrial], reference: tuple[float, ...] | None,
                      metrics: tuple[str, ...] = METRICS) -> list[Metric]:
    """The front's hypervolume after each finished trial as MLflow metrics (step k = k trials
    finished), from vlpuda.front.trials.hypervolume_steps."""
    values = hypervolume_values(finished, reference, metrics)
    return [Metric(HYPERVOLUME, value, trial_millis(trial), k)
            for k, (trial, value) in enumerate(zip(finished, values), start=1)]


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
    client.log_text(run_id, csv_text(rows, columns), table_csv)
    fig = front_figure(points, references, title)
    client.log_figure(run_id, fig, figure, save_kwargs={"dpi": 120})
    if image_step is not None:
        log_front_image(client, run_id, fig, image_step)
    return [table, table_csv, figure]


def logged_image_steps(client: MlflowClient, run_id: str, key: str) -> set[int]:
    """Steps of the images logged under `key` (MLflow names them `<key>+step+<n>+...`)."""
    steps = set()
    for item in client.list_artifacts(run_id, IMAGES_DIR):
        name = item.path.rsplit("/", 1)[-1]
        parts = name.split("+")
        if len(parts) > 2 and parts[0] == key and parts[1] == "step" and parts[2].isdigit():
            steps.add(int(parts[2]))
    return steps


def log_front_image(client: MlflowClient, run_id: str, fig: Figure, step: int) -> bool:
    """Log the figure as the `pareto_front` image at `step`, unless that step has one."""
    from PIL import Image

    if step in logged_image_steps(client, run_id, FRONT_IMAGE_KEY):
        return False
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    buffer.seek(0)
    with Image.open(buffer) as image:
        client.log_image(run_id, image.convert("RGB"), key=FRONT_IMAGE_KEY, step=step,
                         synchronous=True)
    return True


def front_html(study: optuna.Study, reference: tuple[float, ...], title: str,
               objectives: tuple[str, str] = METRICS) -> str:
    """Optuna's Pareto-front and hypervolume-history figures of a two-objective study, as one
    HTML page.

    Args:
        study: the search's study (its COMPLETE trials are plotted).
        reference: the hypervolume reference point, in objective order (front.reference).
        title: the page's and the front figure's title.
        objectives: the study's objective names, in order.
    """
    import optuna
    import optuna.visualization as vis

    front = vis.plot_pareto_front(study, target_names=[objectives[1], objectives[0]],
                                  targets=lambda t: (t.values[1], t.values[0]))
    front.update_xaxes(type="log")
    front.update_layout(title=title)
    with warnings.catch_warnings():  # experimental since Optuna 3.3
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        history = vis.plot_hypervolume_history(study, reference_point=list(reference))
    history.update_layout(title=f"hypervolume after each trial (reference: "
                                f"{objectives[0]} {reference[0]:g}, "
                                f"{objectives[1]} {reference[1]:,.0f})")
    body = (front.to_html(full_html=False, include_plotlyjs=True)
            + history.to_html(full_html=False, include_plotlyjs=False))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"</head><body>{body}</body></html>\n")


# ---- the search's front -----------------------------------------------------------------------


def _front_columns(front: Front) -> list[str]:
    return [*front_columns(front), TUNE_TRIAL_ID, RUN_ID_COLUMN, "checkpoint_path"]


def _title(recorder: Recorder, task: str | None, complete: int, size: int) -> str:
    info = recorder.info
    what = task or ", ".join(f"{s} -> {t}" for s, t in info.task_pairs)
    return (f"{info.name}: {what} ({info.model}); {size} of {complete} complete trials "
            "on the front")


def _tag_children(recorder: Recorder, trials: list[FrozenTrial], front: Front,
                  children: dict[str, Run]) -> None:
    rank_of = {t.number: r for t, r in zip(front.complete, front.ranks)}
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
                     tune_trials: dict[str, dict[str, Any]]) -> FrontSummary:
    """Write the study's front, hypervolume history and pareto tags (see module docstring).
    `tune_trials`: each Tune trial's last result, by Tune trial id (for per-task fronts)."""
    info, client = recorder.info, recorder.client
    trials = study.get_trials(deepcopy=False)  # read once: an RDB storage reads it each time
    front = front_of(trials)
    finished = finished_in_order(trials)
    complete = front.complete
    children = study_children(recorder)
    artifacts: list[str] = []

    values = trial_values(complete)
    if complete:
        rows = [{**row, RUN_ID_COLUMN: _run_id(children, row.get(TUNE_TRIAL_ID))}
                for row in front_rows(front)]
        # The figure shows true accuracy wherever the target has labels (for a label-free
        # objective: each trial's kept epoch); the paper's points only on that scale.
        truth = values if front.metrics[0] == METRICS[0] else selected_accuracy(complete)
        on_front = [r == 0 for r in front.ranks]
        points = (trial_points(complete, truth if truth is not None else values, on_front)
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
    _tag_children(recorder, trials, front, children)
    return FrontSummary(len(front.trials), len(complete), len(finished), front.hypervolume,
                        artifacts)


def _run_id(children: dict[str, Run], trial_id: Any) -> str | None:
    run = children.get(str(trial_id))
    return run.info.run_id if run else None


# ---- per-task fronts of a multi-task search ---------------------------------------------------


def _task_fronts(recorder: Recorder, complete: list[FrozenTrial],
                 tune_trials: dict[str, dict[str, Any]], children: dict[str, Run],
                 finished: list[FrozenTrial], artifacts: list[str]) -> list[Metric]:
    """Each task's own front (its accuracy against its stored parameters)."""
    info, metrics = recorder.info, []
    for task, pair in zip(info.tasks, info.task_pairs):
        tf: TaskFront | None = task_front(task, complete, tune_trials)
        if tf is None:
            continue
        rows = [{**row, RUN_ID_COLUMN: _run_id(children, row.get(TUNE_TRIAL_ID))}
                for row in tf.rows]
        artifacts += _write_front(recorder, f"{FRONT_DIR}/{task}", rows,
                                  [*tf.columns, RUN_ID_COLUMN],
                                  trial_points(tf.trials, tf.values, tf.ranks == 0),
                                  _title(recorder, task, len(tf.trials), len(rows)),
                                  paper_references(info.benchmark, info.model, [pair]))
        last = finished[-1] if finished else None
        metrics.append(Metric(f"{task}/{HYPERVOLUME}", tf.hypervolume,
                              trial_millis(last) if last else 0, len(finished)))
        for trial, rank in zip(tf.trials, tf.ranks):
            run = children.get(str(trial.user_attrs.get(TUNE_TRIAL_ID)))
            if run is not None:
                set_tags(recorder.client, run.info.run_id,
                         {f"{TAG_PARETO}/{task}": "true" if rank == 0 else "false"},
                         run.data.tags)
    return metrics
