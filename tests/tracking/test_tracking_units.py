"""The pure parts of tracking: destinations, what becomes a metric, summaries, the paper's
reference points, hypervolume per finished trial, the figure, and the one-warning guard."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from conftest import free_port
from vlpuda.front.figure import TrialPoint, front_figure
from vlpuda.front.references import paper_references
from vlpuda.tracking.content import SearchInfo, result_metrics, summary_metrics
from vlpuda.tracking.front import hypervolume_steps
from vlpuda.tracking.live import Guard
from vlpuda.tracking.where import (
    Destination,
    TrackingError,
    resolve_destination,
    server_problem,
    ui_command,
)


# ---- destinations ----------------------------------------------------------------------------


def test_default_destination_is_absolute_and_inside_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dest = resolve_destination(None, Path("runs/demo"))
    run_dir = (tmp_path / "runs" / "demo").resolve()
    assert dest.uri == f"sqlite:///{run_dir}/mlflow.db"
    assert dest.uri.startswith("sqlite:////")  # four slashes: an absolute path
    assert dest.artifact_location == str(run_dir / "mlartifacts")
    assert ui_command(dest) == (f"mlflow ui --backend-store-uri sqlite:///{run_dir}/mlflow.db "
                                f"--default-artifact-root {run_dir}/mlartifacts")


def test_other_destinations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_destination("sqlite:///rel/m.db", tmp_path).uri == \
        f"sqlite:///{tmp_path.resolve()}/rel/m.db"
    assert resolve_destination("shared.db", tmp_path).uri == \
        f"sqlite:///{tmp_path.resolve()}/shared.db"
    server = resolve_destination("http://head:5000/", tmp_path)
    assert server == Destination("http://head:5000")  # the server picks the artifact store
    assert "http://head:5000" in ui_command(server)
    assert resolve_destination("postgresql://u@db/mlflow", tmp_path).uri == \
        "postgresql://u@db/mlflow"


@pytest.mark.parametrize("uri", ["mlruns", "file:///tmp/mlruns", "sqlite:///:memory:",
                                 "ftp://host/x"])
def test_destinations_that_cannot_work_say_what_to_use(uri, tmp_path):
    with pytest.raises(TrackingError, match="sqlite|http"):
        resolve_destination(uri, tmp_path)


def test_a_dead_server_is_noticed_in_seconds():
    problem = server_problem(Destination(f"http://127.0.0.1:{free_port()}"), timeout=2)
    assert problem is not None and "cannot reach" in problem
    assert server_problem(Destination("sqlite:////tmp/x.db")) is None


def test_guard_warns_once_and_switches_off():
    said: list[str] = []
    guard = Guard("http://x", "vlpuda sync runs/x", said.append)

    def fail():
        raise ConnectionError("refused\nlong traceback")

    assert guard.run(lambda: 3) == 3
    assert guard.run(fail) is None
    assert guard.run(fail) is None
    assert guard.run(lambda: 3) is None  # off for good
    assert len(said) == 1
    assert "ConnectionError: refused" in said[0] and "vlpuda sync runs/x" in said[0]
    assert "traceback" not in said[0]


# ---- what is logged --------------------------------------------------------------------------


def test_only_meaningful_numbers_become_metrics_stepped_by_iteration():
    result = {"target_acc": 80.0, "target_acc_last": 79.0, "stored_params": 1234,
              "proxy_im": 0.5, "epoch": 2, "iteration": 200, "loss": 0.3,
              "A_to_B/target_acc": 81.0, "A_to_B/proxy_im": 0.4, "other/target_acc": 1.0,
              "pid": 42, "timestamp": 1_700_000_000, "train_started_at": 1.7e9, "workers": 2,
              "training_iteration": 2, "done": False, "trial_id": "12345678",
              "config": {"lr": 1e-3}, "checkpoint_path": "/x", "time_this_iter_s": 3.0,
              "target_acc_clip": float("nan")}
    metrics = result_metrics(result, ["A_to_B", "C_to_D"], default_time_s=0)
    assert {m.key: m.value for m in metrics} == {
        "target_acc": 80.0, "target_acc_last": 79.0, "stored_params": 1234.0,
        "proxy_im": 0.5, "epoch": 2.0, "loss": 0.3, "A_to_B/target_acc": 81.0,
        "A_to_B/proxy_im": 0.4}
    assert {m.step for m in metrics} == {200}
    assert {m.timestamp for m in metrics} == {1_700_000_000_000}


def test_summary_names_the_best_epochs_delta_size_and_best_proxies():
    rows = [{"epoch": 1, "best_epoch": 1, "stored_params": 10, "delta_bytes": 80, "proxy_im": .2},
            {"epoch": 2, "best_epoch": 2, "stored_params": 20, "delta_bytes": 160, "proxy_im": .5},
            {"epoch": 3, "best_epoch": 2, "stored_params": 30, "delta_bytes": 240, "proxy_im": .4}]
    assert summary_metrics(rows, ["A_to_B"]) == {
        "best_epoch_stored_params": 20.0, "best_epoch_delta_bytes": 160.0, "best_proxy_im": 0.5}
    # Multi-task: each task's own best epoch (the aggregate has none).
    tasks = ["A_to_B", "B_to_A"]
    multi = [{"epoch": e, **{f"{t}/{k}": v for t in tasks for k, v in row.items()}}
             for e, row in enumerate(rows, start=1)]
    multi[2]["B_to_A/best_epoch"] = 3
    summary = summary_metrics(multi, tasks)
    assert summary["A_to_B/best_epoch_stored_params"] == 20.0
    assert summary["B_to_A/best_epoch_stored_params"] == 30.0
    assert "best_epoch_stored_params" not in summary


# ---- the paper's points ----------------------------------------------------------------------


def test_references_match_the_benchmark_backbone_and_task():
    refs = {r.label: r for r in paper_references("office_home", "RN50", [("Art", "Clipart")])}
    rst = refs["CMKD+RST (paper)"]
    assert rst.target_acc == 64.9 and rst.stored_params == pytest.approx(1.23e6 / 12)
    assert refs["CLIP zero-shot (paper)"].stored_params == 0
    sweep = [r for r in refs.values() if r.series]
    assert len(sweep) == 5 and {r.target_acc for r in sweep} >= {78.8, 76.9}
    # Two ViT tasks: mean accuracy of their columns, storage of two tasks.
    two = {r.label: r for r in paper_references(
        "office_home", "ViT-B-16", [("Art", "Clipart"), ("Real_World", "Product")])}
    rst = two["CMKD+RST (paper, mean of these 2 tasks)"]
    assert rst.target_acc == pytest.approx((78.9 + 94.1) / 2)
    assert rst.stored_params == pytest.approx(1.02e6 / 12 * 2)
    assert paper_references("office_home", "local-dir:/m", [("Art", "Clipart")]) == []
    assert paper_references("tiny", "RN50", [("Art", "Clipart")]) == []
    visda = paper_references("visda", "RN101", [("train", "validation")])
    assert [(r.target_acc, r.stored_params) for r in visda] == [(84.4, 0.0), (86.6, 0.03e6)]


# ---- the front on the parent -----------------------------------------------------------------


def _trial(state: TrialState, values=None):
    return optuna.trial.create_trial(state=state, values=values, params={"x": 0.5},
                                     distributions={"x": FloatDistribution(0, 1)})


def test_hypervolume_after_each_finished_trial():
    finished = [_trial(TrialState.COMPLETE, [50.0, 100.0]),
                _trial(TrialState.PRUNED),
                _trial(TrialState.COMPLETE, [60.0, 300.0]),
                _trial(TrialState.COMPLETE, [40.0, 200.0])]  # dominated: no gain
    steps = hypervolume_steps(finished, (0.0, 400.0))
    assert [m.step for m in steps] == [1, 2, 3, 4]
    # (400-100)*50 = 15000; then + (400-300)*(60-50) = 1000.
    assert [m.value for m in steps] == [15000.0, 15000.0, 16000.0, 16000.0]
    assert {m.key for m in steps} == {"hypervolume"}


def test_front_figure_log_axis_and_references():
    points = [TrialPoint(0, 80.0, 1e5, True), TrialPoint(1, 70.0, 2e5, False),
              TrialPoint(2, 85.0, 1e6, True)]
    refs = paper_references("office_home", "RN50", [("Art", "Clipart")])
    fig = front_figure(points, refs, "demo")
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    labels = ax.get_legend_handles_labels()[1]
    assert "Pareto front" in labels and "dominated trials" in labels
    assert "CMKD+RST (paper)" in labels and "CLIP zero-shot (paper)" in labels
    png = io.BytesIO()
    fig.savefig(png, format="png")
    assert png.getvalue()[:4] == b"\x89PNG"


def test_the_tune_callback_survives_tunes_pickling(tmp_path):
    from vlpuda.tracking.live import TrackingCallback

    info = SearchInfo("s/tune-1", "s", "s", "s", str(tmp_path), ("A_to_B",), (("A", "B"),),
                      3, None, "tiny", "RN50")
    said: list[str] = []
    callback = TrackingCallback(info, Destination(f"http://127.0.0.1:{free_port()}"),
                                Guard("x", "y", said.append))
    callback.guard.disable("down")
    copy = pickle.loads(pickle.dumps(callback))
    assert copy.info == info and copy.guard.enabled  # a resumed search tries the server again
    assert len(said) == 1


# ---- the tracking: section -------------------------------------------------------------------


def test_tracking_section_is_validated_with_its_keys(monkeypatch, tmp_path):
    from vlpuda.errors import ConfigError
    from vlpuda.tracking.where import plan_tracking, tracking_settings, with_cli_choices

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_settings({}).effective_uri() is None  # the run dir's own store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team:5000")
    assert tracking_settings({}).effective_uri() == "http://team:5000"
    raw = with_cli_choices({"lr": 1e-3}, "http://head:5000", None)
    assert tracking_settings(raw).effective_uri() == "http://head:5000"
    assert not tracking_settings(with_cli_choices(raw, None, False)).enabled
    with pytest.raises(ConfigError) as err:
        tracking_settings({"tracking": {"uri": "mlruns", "experimnt": "x"}}, "p.yaml")
    assert "tracking.experimnt: unknown key" in str(err.value)
    with pytest.raises(ConfigError, match="tracking.uri: tracking URI 'mlruns'"):
        plan_tracking({"tracking": {"uri": "mlruns"}}, tmp_path)  # resolved for the run dir
