"""Tracking a real (tiny) Tune + Optuna search in MLflow: the SQLite default, a real tracking
server, the server dying mid-search, and `vlpuda sync` filling MLflow in afterwards."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ray.tune import Callback

from tracking_helpers import (
    EPOCHS,
    ITERS,
    front_table,
    differences,
    read_json_artifact,
    real_trainable,
    run_tiny_search,
    runs_of,
    snapshot,
    tiny_plan,
    tune_rows,
)
from vlpuda.cli import main
from vlpuda.naming import compact_count
from vlpuda.tracking.content import TAG_PARENT, TAG_TRIAL
from conftest import free_port

pytestmark = pytest.mark.usefixtures("ray_session")

# Keys the trial reports that are bookkeeping, not results: never MLflow metrics.
NOT_METRICS = {"train_started_at", "trial_started_at", "workers", "pid", "timestamp",
               "training_iteration", "time_this_iter_s", "done", "iteration"}


def check_search(uri: str, plan, study, tmp_path: Path) -> None:
    """Parent, children, histories, front table/figure and pareto tags, read back."""
    client, parents, children = runs_of(uri, plan.name)
    rows = tune_rows(plan)
    tasks = [f"{t.src}_to_{t.tgt}" for t in plan.tasks]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    # One child per finished trial, nested under the parent, named by its Tune trial id.
    assert len(children) == len(rows) == plan.settings.num_samples
    assert {c.data.tags[TAG_TRIAL] for c in children} == set(rows)
    assert {c.data.tags[TAG_PARENT] for c in children} == {parent.info.run_id}
    # The parent records the resolved config, the space, sampler and versions.
    # What the space searches is listed as searched, what it fixes with its value: never the
    # preset's value, which no trial used.
    assert parent.data.params["lr"] == "searched: float [0.0001, 0.01] log"
    assert parent.data.params["rst"] == "True"
    assert parent.data.params["search.sampler"] == "random"
    assert parent.data.params["space"] == "cmkd_rst"
    # A model-training experiment: MLflow's UI opens it on the runs table, not on traces.
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.tags["version.mlflow"] and parent.data.tags["git_commit"]

    numbers = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    front = {t.number for t in study.best_trials}
    for child in children:
        trial_rows = rows[child.data.tags[TAG_TRIAL]]
        trial = numbers[child.data.tags[TAG_TRIAL]]
        # Params are the trial's config, with the config's own names.
        assert child.data.params["lr"] == repr(trial.params["lr"])
        assert child.data.params["rst_threshold"]
        assert not NOT_METRICS & set(child.data.metrics)
        assert not any(k.startswith("config") for k in child.data.metrics)
        for key in ("target_acc", "stored_params"):
            history = client.get_metric_history(child.info.run_id, key)
            assert [(m.step, m.value) for m in history] == \
                [(r["iteration"], pytest.approx(r[key])) for r in trial_rows]
            assert [m.step for m in history] == [ITERS * e for e in range(1, EPOCHS + 1)]
        assert child.data.metrics["target_acc_last"] == trial_rows[-1]["target_acc_last"]
        # The best epoch's delta is the one logged (per task in a multi-task search).
        for task in tasks:
            prefix = f"{task}/" if len(tasks) > 1 else ""
            best = trial_rows[-1][f"{prefix}best_epoch"]
            assert child.data.metrics[f"{prefix}best_epoch_stored_params"] == \
                trial_rows[best - 1][f"{prefix}stored_params"]
            local = Path(client.download_artifacts(
                child.info.run_id, f"delta/{prefix}best_delta.safetensors", str(tmp_path)))
            assert local.read_text() == f"{child.data.tags[TAG_TRIAL]} {task} epoch {best}"
        assert child.data.tags["pareto"] == ("true" if trial.number in front else "false")
        assert child.data.tags["state"] == "COMPLETE"
        assert child.data.tags["optuna_trial"] == str(trial.number)
        # Named by the same number as the front, with its result once finished.
        assert child.info.run_name == (
            f"t{trial.number:02d} · {trial.values[0]:.1f} % · "
            f"{compact_count(trial.values[1])}")
        assert child.info.status == "FINISHED"
    ranks = {c.data.tags["pareto_rank"] for c in children}
    assert "0" in ranks

    # The front: a table the UI shows, the CSV, the figure, hypervolume per finished trial.
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")}
    assert {"pareto/front.json", "pareto/front.csv", "pareto/front.png", "pareto/front.html",
            "pareto/summary.json"} <= artifacts
    # The figure is also the parent's image (the UI shows images on the run page), logged once
    # per number of finished trials.
    images = [a.path for a in client.list_artifacts(parent.info.run_id, "images")]
    assert sorted(p.split("+")[2] for p in images if p.endswith(".png")) == [str(len(rows))]
    table = front_table(uri, parent.info.run_id)
    assert sorted(table["trial"]) == sorted(front)
    by_child = {c.info.run_id: c for c in children}
    assert all(by_child[r].data.tags["pareto"] == "true" for r in table["mlflow_run_id"])
    hv = client.get_metric_history(parent.info.run_id, "hypervolume")
    assert [m.step for m in hv] == list(range(1, len(rows) + 1))
    assert [m.value for m in hv] == sorted(m.value for m in hv)  # never falls
    summary = read_json_artifact(client, parent.info.run_id, "pareto/summary.json", tmp_path)
    assert hv[-1].value == pytest.approx(summary["hypervolume"])


def test_default_sqlite_store_in_the_run_dir(tmp_path, tiny_files, empty_mlflow_db,
                                             monkeypatch, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(empty_mlflow_db, run_dir / "mlflow.db")  # schema creation is slow; same result
    # The destination does not follow the working directory.
    monkeypatch.chdir(tmp_path)
    plan = tiny_plan(tiny_files, Path("run"), "sqlite-search")

    tracker, study, _ = run_tiny_search(plan, None)

    uri = f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
    assert tracker.dest.uri == uri
    assert tracker.dest.artifact_location == str(run_dir.resolve() / "mlartifacts")
    out = capsys.readouterr()
    assert f"mlflow ui --backend-store-uri {uri}" in out.out
    assert "warning" not in out.err.lower() or "MLflow tracking" not in out.err
    check_search(uri, plan, study, tmp_path / "dl")
    assert any((run_dir / "mlartifacts").rglob("front.png"))

    # A back-fill of a complete store changes nothing, and writes what live logging wrote.
    before = snapshot(uri, plan.name)
    assert main(["sync", str(run_dir)]) == 0
    assert differences(snapshot(uri, plan.name), before) == []
    fresh = tmp_path / "fresh.db"
    shutil.copy(empty_mlflow_db, fresh)
    assert main(["sync", str(run_dir), "--tracking-uri", f"sqlite:///{fresh}"]) == 0
    assert differences(snapshot(f"sqlite:///{fresh}", plan.name), before) == []


def test_tracking_server_multi_task(tmp_path, tiny_files, mlflow_server):
    mlflow_server.start()
    plan = tiny_plan(tiny_files, tmp_path / "run", "server-search", multi=True, num_samples=3)

    tracker, study, _ = run_tiny_search(plan, mlflow_server.uri)

    assert tracker.enabled
    check_search(mlflow_server.uri, plan, study, tmp_path / "dl")
    client, (parent,), children = runs_of(mlflow_server.uri, plan.name)
    tasks = ["Art_to_Clipart", "Clipart_to_Art"]
    assert parent.data.tags["tasks"] == ",".join(tasks)
    for child in children:
        for task in tasks:
            history = client.get_metric_history(child.info.run_id, f"{task}/target_acc")
            assert [m.step for m in history] == [ITERS * e for e in range(1, EPOCHS + 1)]
            assert f"{task}/best_epoch_stored_params" in child.data.metrics
            assert child.data.tags[f"pareto/{task}"] in ("true", "false")
        deltas = {a.path for a in client.list_artifacts(child.info.run_id, "delta")}
        assert deltas == {f"delta/{task}" for task in tasks}
    artifacts = {a.path for task in tasks
                 for a in client.list_artifacts(parent.info.run_id, f"pareto/{task}")}
    assert {f"pareto/{task}/front.png" for task in tasks} <= artifacts
    assert all(f"{task}/hypervolume" in parent.data.metrics for task in tasks)


class KillServerAfter(Callback):
    """Kills the tracking server once `count` trials have completed (an outage mid-search)."""

    def __init__(self, server, count: int) -> None:
        self.server, self.count, self.done = server, count, 0

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks with the experiment; a server process cannot be pickled.
        return {"server": None, "count": self.count, "done": self.done}

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        if self.done == self.count:
            self.server.kill()


def test_server_dies_mid_search_then_sync_fills_in(tmp_path, tiny_files, mlflow_server,
                                                   empty_mlflow_db, capsys):
    mlflow_server.start()
    plan = tiny_plan(tiny_files, tmp_path / "run", "outage-search")
    warnings: list[str] = []

    tracker, study, results = run_tiny_search(
        plan, mlflow_server.uri, [KillServerAfter(mlflow_server, 1)], warn_log=warnings.append)

    # The search finished every trial; one warning said how to fill MLflow in.
    assert len(results) == plan.settings.num_samples and not results.errors
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    assert len(warnings) == 1 and f"vlpuda sync {plan.run_dir}" in warnings[0]
    assert not tracker.enabled
    assert f"vlpuda sync {plan.run_dir}" in capsys.readouterr().out

    mlflow_server.start()  # back up, on the same store
    _, _, partial = runs_of(mlflow_server.uri, plan.name)
    assert len(partial) < plan.settings.num_samples or \
        any(c.info.status == "RUNNING" for c in partial)

    assert main(["sync", str(plan.run_dir)]) == 0  # the URI comes from the run dir
    synced = snapshot(mlflow_server.uri, plan.name)
    assert synced["counts"] == (1, plan.settings.num_samples)
    check_search(mlflow_server.uri, plan, study, tmp_path / "dl")
    assert main(["sync", str(plan.run_dir)]) == 0
    assert differences(snapshot(mlflow_server.uri, plan.name), synced) == []  # twice: no change

    # The same content as a search whose tracking never failed (see the SQLite test: live
    # logging and a back-fill write the same), here a back-fill into a fresh store.
    fresh = tmp_path / "fresh.db"
    shutil.copy(empty_mlflow_db, fresh)
    assert main(["sync", str(plan.run_dir), "--tracking-uri", f"sqlite:///{fresh}"]) == 0
    assert differences(snapshot(f"sqlite:///{fresh}", plan.name), synced) == []


def test_server_down_at_start_warns_once(tmp_path, tiny_files):
    plan = tiny_plan(tiny_files, tmp_path / "run", "down-search", num_samples=2)
    warnings: list[str] = []

    tracker, study, results = run_tiny_search(plan, f"http://127.0.0.1:{free_port()}",
                                              warn_log=warnings.append)

    assert len(results) == 2 and not results.errors
    assert len(study.trials) == 2
    assert len(warnings) == 1 and "cannot reach" in warnings[0]
    assert tracker.parent_run_id is None


@pytest.mark.slow
def test_real_trial_logs_a_delta_that_export_reproduces(tmp_path, tiny_files, empty_mlflow_db,
                                                        capsys):
    """The real path: a trial trained by Ray Train (vlpuda.trainables.trial) reports its
    checkpoint; the callback logs that trial's best delta on its child run; `vlpuda export`
    fetches it and `vlpuda evaluate` gives the accuracy the trial reported."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(empty_mlflow_db, run_dir / "mlflow.db")
    plan = tiny_plan(tiny_files, run_dir, "real", num_samples=1, epochs=2, iters_per_epoch=2)

    run_tiny_search(plan, None, trainable=real_trainable(plan))

    uri = f"sqlite:///{run_dir}/mlflow.db"
    _, _, (child,) = runs_of(uri, "real")
    assert child.data.tags["pareto"] == "true" and child.data.tags["state"] == "COMPLETE"
    out = tmp_path / "exported"
    capsys.readouterr()
    assert main(["export", "--run", child.info.run_id, "--out", str(out),
                 "--tracking-uri", str(run_dir)]) == 0
    assert main(["evaluate", "--checkpoint", str(out / "best_delta.safetensors")]) == 0
    evaluated = capsys.readouterr().out
    assert f"task head accuracy {child.data.metrics['target_acc']:.2f} %" in evaluated
    assert f"stored parameters {int(child.data.metrics['best_epoch_stored_params']):,}" \
        in evaluated
