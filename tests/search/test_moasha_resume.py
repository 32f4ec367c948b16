"""MOASHA's rungs travel with Tune's experiment checkpoint: a restored experiment judges a new
trial against the trials recorded before the interruption (real local Ray Tune, a function
trainable replaying fixed values; no Train).

Three trials, one at a time, rung at epoch 1 of 2, eta 3: A (90 %, 1e5) continues; B (80 %, 2e5),
dominated, is stopped (N = 2 keeps 1); C (70 %, 5e5) dies before its first report and the
experiment ends. After Tuner.restore (resuming
errored trials) C, dominated by both, is third of three (N = 3 keeps 2) and stopped. With the rungs
lost it would be the rung's first arrival and run to the end.
"""

from __future__ import annotations

import os
import sys

import pytest
import ray.cloudpickle
import ray.tune

from vlpuda.search.moasha import MOASHAScheduler, SchedulerState

VALUES = [(90.0, 1e5), (80.0, 2e5), (70.0, 5e5)]
# Trial workers cannot import a test module: send this one's functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def replay(config):
    marker = config.get("fail_once")
    if marker and not os.path.exists(marker):
        # The first run of C dies before reporting (a lost node): the experiment ends with C
        # ERROR, to be resumed.
        open(marker, "w").close()
        raise RuntimeError("lost node")
    for epoch in (1, 2):
        ray.tune.report({"epoch": epoch, "target_acc": config["acc"],
                         "stored_params": config["stored"]})


@pytest.mark.slow
def test_restored_experiment_keeps_the_rungs(ray_session, tmp_path):
    scheduler = MOASHAScheduler(("target_acc", "stored_params"), ("max", "min"), max_t=2,
                                grace_period=1, reduction_factor=3)
    points = [{"acc": a, "stored": s} for a, s in VALUES]
    points[2]["fail_once"] = str(tmp_path / "c-failed")
    space = {"point": ray.tune.grid_search(points)}

    def trainable(config):
        replay(config["point"])

    tuner = ray.tune.Tuner(
        trainable, param_space=space,
        tune_config=ray.tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
        run_config=ray.tune.RunConfig(name="resume", storage_path=str(tmp_path), verbose=0,
                                      callbacks=[SchedulerState(scheduler)]))
    first = tuner.fit()
    finished = [r.metrics for r in first if "epoch" in (r.metrics or {})]
    assert sorted(m["epoch"] for m in finished) == [1, 2]  # A ran 2 epochs, B was stopped at 1

    restored = ray.tune.Tuner.restore(str(tmp_path / "resume"), trainable=trainable,
                                      resume_errored=True)
    results = restored.fit()
    by_acc = {r.metrics["target_acc"]: r.metrics["epoch"] for r in results
              if "epoch" in (r.metrics or {})}
    assert by_acc == {90.0: 2, 80.0: 1, 70.0: 1}  # C judged against A and B: stopped
