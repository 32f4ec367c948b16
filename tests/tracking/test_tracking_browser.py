"""What a user sees of a finished search in real browsers: `mlflow ui` and `optuna-dashboard`,
each started as its own process on the search's stores and read through headless Chromium.

One tiny search (the real Tune, Optuna and tracking parts; see tracking_helpers) serves every
test. Screenshots are kept in the session's temporary folder (`browser-shots*`), for people.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser import Browser, chromium_path
from conftest import free_port
from tracking_helpers import run_tiny_search, runs_of, tiny_plan
from vlpuda.naming import compact_count
from vlpuda.tracking.where import experiment_page, ui_command

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_path() is None,
                       reason="no chromium on PATH (Debian: apt-get install chromium; "
                              ".ci/run installs it)"),
]
NUM_SAMPLES = 5


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory, tiny_files, empty_mlflow_db, ray_session):
    """A finished tiny search logged to the run dir's SQLite store."""
    import shutil

    run_dir = tmp_path_factory.mktemp("browser-search") / "run"
    run_dir.mkdir()
    shutil.copy(empty_mlflow_db, run_dir / "mlflow.db")
    plan = tiny_plan(tiny_files, run_dir, "browser-search", num_samples=NUM_SAMPLES)
    tracker, study, _ = run_tiny_search(plan, None)
    return plan, tracker, study


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser-shots")


def _serve(command: list[str], url: str, log: Path, timeout: float = 240.0):
    """Start a web server in its own process group and wait until `url` answers."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                               start_new_session=True, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError(f"{command[0]} did not answer in {timeout:.0f} s; see {log}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    chromium = Browser(tmp_path / "chromium-profile")
    yield chromium
    chromium.close()


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _expand_parent(browser: Browser) -> None:
    """Click the parent row's expander (the runs table nests children under it)."""
    deadline = time.monotonic() + 60  # the table draws its rows after the runs arrive
    clicked = False
    while not clicked and time.monotonic() < deadline:
        clicked = browser.evaluate(
            "(() => { const b = document.querySelector("
            "'button[data-component-id*=\"runnamecellrenderer\"]');"
            " if (!b) return false; b.click(); return true; })()")
        time.sleep(0 if clicked else 0.5)
    assert clicked, "the runs table has no nested-runs expander"


def test_mlflow_ui_shows_the_trials_and_the_front(finished_search, browser, shots, tmp_path):
    plan, tracker, study = finished_search
    client, parents, children = runs_of(tracker.dest.uri, plan.name)
    parent = parents[0]
    # The command the search printed, on a free port.
    port = free_port()
    command = [_bin("mlflow"), *shlex.split(ui_command(tracker.dest))[1:], "--host",
               "127.0.0.1", "--port", str(port), "--workers", "1"]
    base = f"http://127.0.0.1:{port}"
    server = _serve(command, f"{base}/health", tmp_path / "mlflow-ui.log")
    try:
        # The page the search printed opens on the runs table (model-training mode).
        browser.open(experiment_page(parent.info.experiment_id, base))
        text = browser.wait_for_text("matching runs", "Run Name", plan.name)
        assert "Detect Issues" not in text and "Traces\n0" not in text
        _expand_parent(browser)
        finished = [t for t in study.trials if t.state.is_finished()]
        names = [f"t{t.number:02d} · {t.values[0]:.1f} % · {compact_count(t.values[1])}"
                 for t in finished]
        # Every trial, named by its number with its target_acc and stored_params.
        browser.wait_for_text(*names)
        browser.screenshot(shots / "mlflow-runs.png")

        # The README's filter: the front's trials, and only those.
        front = {t.number for t in study.best_trials}
        browser.type_into("[data-testid=search-box]", "tags.pareto = 'true'")
        browser.wait_for_text(f"{len(front) + 1} matching runs")  # and their parent
        if not any(n in browser.text() for n in names):
            _expand_parent(browser)
        on_front = [n for t, n in zip(finished, names) if t.number in front]
        text = browser.wait_for_text(*on_front)
        assert not [n for t, n in zip(finished, names) if t.number not in front and n in text]
        browser.screenshot(shots / "mlflow-pareto-filter.png")

        # The parent run: its children by name, the front figure as a logged image.
        run_page = f"{base}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
        browser.open(f"{run_page}?workflowType=machine_learning")
        text = browser.wait_for_text("Child runs", *names[:1])
        assert "searched: float [0.0001, 0.01] log" in text  # the honest params
        browser.screenshot(shots / "mlflow-parent.png")
        loaded = 0
        # The page is opened again if the image has not come within a minute: on a loaded
        # machine the UI's first request for it can fail, and the page does not ask again.
        for _ in range(2):
            browser.open(f"{run_page}/model-metrics?workflowType=machine_learning")
            browser.wait_for_text("pareto_front")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not loaded:
                # The image sits below the chart's legend: scroll it into view (lazy loading).
                # MLflow 3.17 names the artifact in the image's URL; 3.18 shows a blob: URL in
                # a card headed by the key.
                loaded = browser.evaluate(
                    "(() => { const imgs = [...document.querySelectorAll('img')].filter(i => {"
                    " if (decodeURIComponent(i.src).includes('pareto_front')) return true;"
                    " for (let e = i.parentElement; e; e = e.parentElement)"
                    "   if ((e.innerText || '').trimStart().startsWith('pareto_front'))"
                    "     return true;"
                    " return false; });"
                    " imgs.forEach(i => i.scrollIntoView());"
                    " return imgs.filter(i => i.complete && i.naturalWidth > 100).length; })()")
                time.sleep(0.5)
            if loaded:
                break
        browser.screenshot(shots / "mlflow-parent-front-image.png")
        assert loaded, f"the parent's pareto_front image never loaded (see {shots})"
    finally:
        _stop(server)


def test_optuna_dashboard_shows_the_front(finished_search, browser, shots, tmp_path):
    plan, _, study = finished_search
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = _serve([_bin("optuna-dashboard"), plan.storage, "--host", "127.0.0.1",
                     "--port", str(port)], f"{base}/api/studies", tmp_path / "dashboard.log")
    try:
        study_id = study._study_id
        browser.open(f"{base}/dashboard/studies/{study_id}")
        # The Pareto-front page: objectives by name (study.set_metric_names), not
        # "Objective 0", and the front's trials by the numbers every other output uses.
        best = [f"Trial {t.number}\n" for t in study.best_trials]
        browser.wait_for_text(plan.study_name, "Pareto Front", "target_acc", "stored_params",
                              "Best Trials", *best)
        browser.screenshot(shots / "optuna-dashboard-pareto.png")
        browser.open(f"{base}/dashboard/studies/{study_id}/trials")
        text = browser.wait_for_text(f"{len(study.trials)} Trials",
                                     *[f"Trial {t.number}\n" for t in study.trials])
        # The user attributes that tie a trial to Tune and to its delta.
        assert "tune_trial_id" in text and "checkpoint_path" in text
        browser.screenshot(shots / "optuna-dashboard-trials.png")
    finally:
        _stop(server)
