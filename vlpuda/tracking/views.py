"""Views of the front where the MLflow UI shows them without digging through artifacts.

* The front figure is also logged as an MLflow *image* under the key `pareto_front`, with step =
  the number of finished trials: MLflow 3 shows logged images on the run's overview page and as
  an image chart in the experiment's chart view, so the front is one click from the runs table.
  A step already logged is not logged again, so a back-fill adds nothing.
* `pareto/front.html`: Optuna's own Plotly views of the study (`plot_pareto_front`, stored
  parameters on a log axis, and `plot_hypervolume_history`) in one self-contained page (the
  Plotly library is inlined: clusters and laptops without internet render it too). Hovering a
  point shows its trial number, values and parameters; MLflow's artifact viewer shows HTML.
"""

from __future__ import annotations

import html
import io
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

FRONT_IMAGE_KEY = "pareto_front"
# MLflow 3.17's UI picks GenAI or model-training mode from this URL parameter (else from the
# browser's last choice, GenAI by default), not from the experiment's kind tag.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default
IMAGES_DIR = "images"  # where MlflowClient.log_image files keyed images


def experiment_page(experiment_id: str, base: str | None = None) -> str:
    """The URL of the experiment's runs table in MLflow's UI, in model-training mode."""
    return f"{(base or LOCAL_UI).rstrip('/')}/#/experiments/{experiment_id}?{MODEL_TRAINING_VIEW}"


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
               objectives: tuple[str, str] = ("target_acc", "stored_params")) -> str:
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
