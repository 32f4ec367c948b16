"""A seconds-long search with the real Tune, Optuna and tracking parts, and MLflow read-backs.

The trial is a trivial function trainable that reports the training loop's metric names (plus
the bookkeeping keys that must *not* become metrics) for a few epochs and writes delta files
where the loop would, so the tracking code sees exactly the shapes a real search produces while
the test stays fast. Everything around it is real: the search plan, the run dir's manifest,
ParetoOptunaSearch with a persistent study, Tune's experiment folder, and MLflow.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from helpers import tiny_train_overrides
from vlpuda.layout import read_manifest, write_manifest
from vlpuda.search.plan import build_plan
from vlpuda.search.study import load_study
from vlpuda.tracking.content import TAG_KIND, TAG_PARENT, TAG_TRIAL

EPOCHS = 3
ITERS = 5

# Ray workers cannot import this test module by name: ship its functions by value.
import ray.cloudpickle  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
TASKS = (("Art", "Clipart"), ("Clipart", "Art"))


def tiny_plan(tiny_files, run_dir: Path, name: str, multi: bool = False, num_samples: int = 4,
              **train: Any):
    """A validated plan over the tiny task (`train` overrides training keys)."""
    data, model = tiny_files
    preset = tiny_train_overrides(data, model, run_dir / "train")
    preset.update(epochs=EPOCHS, iters_per_epoch=ITERS, rst=True, rst_threshold=1e-4)
    preset.update(train)
    preset["search"] = {
        "space": "cmkd_rst", "num_samples": num_samples, "seed": 0, "name": name,
        "space_overrides": {"lr": {"low": 1e-4, "high": 1e-2},
                            "lr_multiplier": {"low": 1, "high": 100}},
        "run_dir": str(run_dir), "sampler": "random",
        **({"tasks": [list(t) for t in TASKS]} if multi else {}),
    }
    return build_plan(preset, check_paths=False)


def _task_metrics(config: dict[str, Any], epoch: int, history: list[float], salt: float
                  ) -> dict[str, Any]:
    """Made-up but plausible numbers: accuracy rises with epochs, storage falls with tau."""
    last = 40 + 50 * (1 - math.exp(-config["lr"] * 300 * epoch)) * (1 - salt) \
        - 3 * (epoch == EPOCHS) * config["lambda1"]
    history.append(last)
    best_epoch = 1 + max(range(len(history)), key=history.__getitem__)
    stored = int(2e5 / (1 + config["rst_threshold_over_lr"]) * (0.6 + 0.2 * epoch) + 100 * salt)
    return {"target_acc": max(history), "target_acc_last": last, "target_acc_clip": 30.0,
            "proxy_im": 0.1 * epoch + salt, "proxy_clip_agreement": 50.0 + epoch,
            "stored_params": stored, "delta_bytes": 8 * stored, "changed_params": stored - 100,
            "best_epoch": best_epoch, "epoch": epoch, "iteration": epoch * ITERS,
            "loss": 1.0 / epoch, "lr": config["lr"], "seconds_per_iteration": 0.01}


def tiny_trainable(config: dict[str, Any], *, tasks: tuple[str, ...], out: str) -> None:
    """Reports like loop.train + trial.py: metrics per epoch, `checkpoint_path` to a folder
    with delta.safetensors (+ best_delta.safetensors when an earlier epoch was the best)."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    histories: dict[str, list[float]] = {t: [] for t in tasks}
    for epoch in range(1, EPOCHS + 1):
        per_task = {t: _task_metrics(config, epoch, histories[t], 0.1 * i)
                    for i, t in enumerate(tasks)}
        checkpoint = Path(out) / trial_id / f"epoch_{epoch}"
        for task, values in per_task.items():
            folder = checkpoint / task if len(tasks) > 1 else checkpoint
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "delta.safetensors").write_text(f"{trial_id} {task} epoch {epoch}")
            best = values["best_epoch"]
            if best != epoch:
                (folder / "best_delta.safetensors").write_text(f"{trial_id} {task} epoch {best}")
        if len(tasks) == 1:
            metrics = dict(next(iter(per_task.values())))
        else:
            from vlpuda.trainables.reporting import aggregate

            metrics = aggregate(per_task)
        # Bookkeeping keys the real trial reports, which must not become MLflow metrics.
        metrics.update(train_started_at=time.time(), trial_started_at=time.time(),
                       workers=1, pid=os.getpid(), checkpoint_path=str(checkpoint))
        ray.tune.report(metrics)


def real_trainable(plan):
    """The search's real trial function (Ray Train, the training loop) with shared assets."""
    from vlpuda.search.assets import build_assets, share
    from vlpuda.search.tuner import make_trainable

    tasks, assets = build_assets(plan, log=lambda message: None)
    return make_trainable(plan, tasks, share(assets))


def run_tiny_search(plan, tracking_uri: str | None, extra_callbacks=(), experiment="tune-1",
                    warn_log=None, trainable=None):
    """The driver's steps: manifest, tracker, searcher, Tuner with the callback, finish.
    The trial is `tiny_trainable` unless a real one is given."""
    import ray.tune

    from vlpuda.search.searcher import ParetoOptunaSearch
    from vlpuda.search.study import make_sampler, open_storage
    from vlpuda.search.tracked import search_info
    from vlpuda.tracking.live import SearchTracker, warn
    from vlpuda.tracking.where import resolve_destination
    from vlpuda.trainables.reporting import task_key

    manifest = {"name": plan.name, "study_name": plan.study_name, "storage": plan.storage,
                "ray_storage": plan.ray_storage, "experiment": experiment, "source": None,
                "num_samples": plan.settings.num_samples, "epochs": plan.epochs,
                "raw": plan.raw, "status": "running"}
    write_manifest(plan.run_dir, manifest)
    tracker = SearchTracker.open(search_info(plan, experiment),
                                 resolve_destination(tracking_uri, plan.run_dir),
                                 plan.ray_storage, warn_log=warn_log or warn)
    searcher = ParetoOptunaSearch(plan.space, full_epochs=plan.epochs, experiment=experiment,
                                  sampler=make_sampler("random", 0, plan.settings.num_samples),
                                  study_name=plan.study_name,
                                  storage=open_storage(plan.storage))
    if trainable is None:
        tasks = tuple(task_key(t) for t in plan.tasks)
        trainable = ray.tune.with_parameters(tiny_trainable, tasks=tasks,
                                             out=str(plan.run_dir / "checkpoints"))
    results = ray.tune.Tuner(
        trainable,
        tune_config=ray.tune.TuneConfig(search_alg=searcher, num_samples=plan.settings.num_samples,
                                        max_concurrent_trials=2),
        run_config=ray.tune.RunConfig(name=experiment, storage_path=plan.ray_storage, verbose=0,
                                      callbacks=[tracker.tune_callback(), *extra_callbacks]),
    ).fit()
    study = load_study(read_manifest(plan.run_dir))
    tracker.finish(study)
    write_manifest(plan.run_dir, {**manifest, "status": "finished"})
    return tracker, study, results


def tune_rows(plan) -> dict[str, list[dict[str, Any]]]:
    """Every trial's results, by Tune trial id, from Tune's own files."""
    from vlpuda.tunefiles import read_all

    return {t.trial_id: t.rows for t in read_all(plan.ray_storage).values()}


# ---- reading MLflow back -------------------------------------------------------------------


def runs_of(uri: str, experiment: str):
    from mlflow import MlflowClient

    from vlpuda.tracking.runs import search_all

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = search_all(client, exp.experiment_id, "") if exp else []
    parents = [r for r in runs if r.data.tags.get(TAG_KIND) == "search"]
    children = [r for r in runs if r.data.tags.get(TAG_KIND) == "trial"]
    return client, parents, children


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    files = []
    for item in client.list_artifacts(run_id, path):
        files += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(_stable_name(f) for f in files)


def _stable_name(path: str) -> str:
    """A logged image's file without the time and uuid MLflow puts in its name
    (`images/<key>+step+<n>+timestamp+<ms>+<uuid>[+compressed].<ext>` -> key, step, kind)."""
    if not path.startswith("images/"):
        return path
    parts = path.removeprefix("images/").split("+")
    kind = "+compressed" if "+compressed" in path else ""
    return f"images/{'+'.join(parts[:3])}{kind}.{path.rsplit('.', 1)[-1]}"


# Tags whose values name this store's runs, users or clocks rather than the search (the commit
# is the one checked out when a parent was created: a commit between two stores' runs moves it).
VOLATILE_TAGS = {TAG_PARENT, "mlflow.user", "mlflow.source.name", "mlflow.source.type",
                 "mlflow.loggedArtifacts", "git_commit"}


def snapshot(uri: str, experiment: str) -> dict[str, Any]:
    """Everything a search put in MLflow, keyed by what identifies it (not by run ids), so two
    stores can be compared: params, tags, metric histories as (step, value), artifacts, status."""
    client, parents, children = runs_of(uri, experiment)

    def view(run) -> dict[str, Any]:
        histories = {key: sorted((m.step, m.value)
                                 for m in client.get_metric_history(run.info.run_id, key))
                     for key in run.data.metrics}
        return {"params": dict(run.data.params),
                "tags": {k: v for k, v in run.data.tags.items() if k not in VOLATILE_TAGS},
                "metrics": histories, "artifacts": _artifacts(client, run.info.run_id),
                "status": run.info.status}

    return {"parents": {r.data.tags["vlpuda.search"]: view(r) for r in parents},
            "children": {r.data.tags[TAG_TRIAL]: view(r) for r in children},
            "counts": (len(parents), len(children))}


def front_table(uri: str, parent_id: str, path: str = "pareto/front.json"):
    """The front as MLflow's own table reader returns it."""
    import mlflow

    # load_table searches runs through the fluent API, i.e. the process-wide tracking URI.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient(uri)
        experiment_id = client.get_run(parent_id).info.experiment_id
        return client.load_table(experiment_id, path, run_ids=[parent_id])
    finally:
        mlflow.set_tracking_uri(previous)


def read_json_artifact(client, run_id: str, path: str, tmp: Path) -> Any:
    return json.loads(Path(client.download_artifacts(run_id, path, str(tmp))).read_text())


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two snapshots differ, as readable paths (empty when they are equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                found.append(f"{path}/{key}: only in {'second' if key not in a else 'first'}")
            else:
                found += differences(a[key], b[key], f"{path}/{key}")
        return found
    return [] if a == b else [f"{path}: {a!r} != {b!r}"[:400]]
