"""Crash and resume: the search driver is killed with SIGKILL mid-search, after a trial finished
and while another is between epochs; `vlpuda search --resume RUN_DIR` finishes the search (the
interrupted trial continues from its checkpoint), every planned trial is accounted for, and no
study trial is left RUNNING."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from itertools import groupby
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search_helpers import run_study, tiny_preset, tune_epochs, tune_trials, write_preset
from vlpuda.cli import main

NUM_SAMPLES = 3
EPOCHS = 3


def finished_and_midway(log: Path) -> bool:
    """A trial has completed and another has reported an epoch but not its last one."""
    text = log.read_text()
    done = set(re.findall(r"trial (\w+) complete:", text))
    reported = set(re.findall(r"trial (\w+) epoch \d+/", text))
    return bool(done) and bool(reported - done)


def wait_for(predicate, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, "the search ended before it could be killed"
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.2)


@pytest.mark.slow
def test_killed_search_resumes_and_accounts_for_every_trial(ray_session, tiny_assets, tmp_path,
                                                            capsys):
    run_dir = tmp_path / "run"
    preset = tiny_preset(tiny_assets, run_dir, {"num_samples": NUM_SAMPLES,
                                                   "max_concurrent_trials": 2}, epochs=EPOCHS)
    config = write_preset(tmp_path / "crash.yaml", preset)
    log = tmp_path / "driver.log"
    # The driver joins this session's Ray, so killing it takes its trials down with it (their
    # owner is gone) without stopping the cluster the resumed search runs on.
    env = {**os.environ, "RAY_ADDRESS": ray_session}
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "vlpuda.cli", "search", "--config",
                                   str(config)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: finished_and_midway(log), driver, timeout=300)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert driver.returncode == -signal.SIGKILL
    before = run_study(run_dir)
    assert any(t.state == TrialState.COMPLETE for t in before.trials)

    assert main(["search", "--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out

    study = run_study(run_dir)
    assert not [t.number for t in study.trials if t.state == TrialState.RUNNING]
    trials = tune_trials(run_dir)
    assert len(trials) == NUM_SAMPLES
    for trial in trials.values():
        assert (trial.status, trial.last_result["epoch"]) == ("TERMINATED", EPOCHS)
    # Interrupted trials continued from their checkpoints, and every epoch a checkpoint holds
    # reached the records: a resumed trial first reports its checkpoint's epoch again (an
    # interruption may have cut that report off after Train saved the checkpoint), so Tune's
    # rows run 1..EPOCHS, an epoch repeated only right after itself (a replay, or a trial that
    # finished after Tune's last snapshot reporting its result once more).
    for trial_id, epochs in tune_epochs(run_dir).items():
        assert [e for e, _ in groupby(epochs)] == list(range(1, EPOCHS + 1)), (trial_id, epochs)
    # MLflow, the authoritative record, holds each epoch once per trial.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    children = [r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])
        if r.data.tags.get("vlpuda.kind") == "trial"]
    assert len(children) >= NUM_SAMPLES
    for run in children:
        history = client.get_metric_history(run.info.run_id, "epoch")
        assert sorted(m.value for m in history) == list(range(1, EPOCHS + 1)), run.info.run_id
    # Each planned Tune trial is exactly one finished study trial; anything else in the study is
    # a trial the crashed driver had asked for but Tune never recorded, now marked FAIL.
    by_tune_id = {}
    for t in study.trials:
        tune_id = t.user_attrs.get("tune_trial_id")
        if tune_id is None:
            assert t.state == TrialState.FAIL, t.number
        else:
            by_tune_id.setdefault(tune_id, []).append(t)
    assert set(by_tune_id) >= set(trials)
    for trial_id in trials:
        assert [t.state for t in by_tune_id[trial_id]] == [TrialState.COMPLETE], trial_id
    assert f"{NUM_SAMPLES} of {NUM_SAMPLES} planned trials finished" in out
    assert "Pareto front" in out
