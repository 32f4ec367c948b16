"""The Tune callback that logs each trial as a child run while the search runs.

It runs in the Tune driver process (callbacks are called by Tune's event loop, never inside trial
workers), so there is a single writer: SQLite is safe, and trials on other cluster nodes log
through the driver to a tracking server without being able to reach it themselves.

Ray's MLflowLoggerCallback is not used: it logs every float in a result as a metric (pids,
timestamps, `config/*`, even digit-only trial ids) and has no parent run. This one logs what
`vlpuda.tracking.content` selects, nests children under the search's parent, and shares the
idempotent Recorder with `vlpuda sync`.

Tune pickles its callbacks into the experiment folder (`tuner.pkl`) and restores them on
`Tuner.restore`; the MLflow client and the warning state are not pickled but rebuilt, so a
resumed search tries its tracking server again and finds its runs by their tags.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from vlpuda.tracking.describe import SearchInfo
from vlpuda.tracking.destination import Destination, limit_http_retries
from vlpuda.tracking.guard import Guard, Log, warn
from vlpuda.tracking.runs import Recorder


def sync_command(run_dir: str) -> str:
    return f"vlpuda sync {run_dir}"


class TrackingCallback(Callback):
    """Logs Tune trials as child runs of a search's parent run.

    Args:
        info: the search (identifies the parent and names the tasks).
        dest: the tracking destination.
        guard: shared with the SearchTracker so a failure warns once for both; a restored
            callback makes its own.
    """

    def __init__(self, info: SearchInfo, dest: Destination, guard: Guard | None = None,
                 recorder: Recorder | None = None) -> None:
        self.info, self.dest = info, dest
        self._guard = guard
        self._recorder = recorder
        self._rows: dict[str, list[dict[str, Any]]] = {}

    # ---- pickling (Tune stores callbacks with the experiment) ---------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"info": self.info, "dest": self.dest}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["info"], state["dest"])

    # ---- plumbing -----------------------------------------------------------------------------
    @property
    def guard(self) -> Guard:
        if self._guard is None:
            self._guard = Guard(self.dest.uri, sync_command(self.info.run_dir), warn)
        return self._guard

    def _connect(self) -> Recorder:
        from mlflow import MlflowClient

        limit_http_retries()
        recorder = Recorder(MlflowClient(self.dest.uri), self.info, self.dest)
        recorder.open_parent()
        return recorder

    def _call(self, method, *args: Any) -> None:
        """Run `method(recorder, *args)` under the guard; connect on first use."""
        if not self.guard.enabled:
            return
        if self._recorder is None:
            self._recorder = self.guard.run(self._connect)
            if self._recorder is None:
                return
        self.guard.run(method, self._recorder, *args)

    def set_log(self, log: Log) -> None:
        self.guard.log = log

    # ---- Tune hooks ---------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._call(self._start, trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self._rows.setdefault(trial.trial_id, []).append(dict(result))
        self._call(self._result, trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._call(self._end, trial, False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._call(self._end, trial, True)

    # ---- what each hook logs ------------------------------------------------------------------
    def _child(self, recorder: Recorder, trial: Any):
        run = recorder.children.get(trial.trial_id)
        if run is None:
            run = recorder.child(trial.trial_id, trial.config, None, int(time.time() * 1000))
        return run

    def _start(self, recorder: Recorder, trial: Any) -> None:
        self._child(recorder, trial)

    def _result(self, recorder: Recorder, trial: Any, result: dict) -> None:
        recorder.log_results(self._child(recorder, trial), [result])

    def _end(self, recorder: Recorder, trial: Any, error: bool) -> None:
        rows = self._rows.pop(trial.trial_id, [])
        if not rows and trial.last_result:
            rows = [dict(trial.last_result)]
        recorder.end_child(self._child(recorder, trial), rows, error)
