"""Logging a search while it runs: the SearchTracker the driver holds, the Tune callback that
logs each trial as a child run, and the Guard that keeps a tracking failure from failing the
search.

    tracker = SearchTracker.open(info, dest, ray_storage)       # before tuner.fit()
    run_config = RunConfig(callbacks=[..., tracker.tune_callback()])
    results = tuner.fit()
    tracker.finish(study)                                        # front, hypervolume, tags

Results live in Tune's experiment directory and the Optuna study; MLflow is a view of them. So a
tracking call that fails (server down, network gone, database locked) must never stop a search:
the first failure prints one warning saying how to fill MLflow in later (`vlpuda sync RUN_DIR`),
and every later call is skipped, so a dead server costs one timeout rather than one per trial
and epoch. Opening never fails on a tracking problem either: an unreachable server turns the
tracker off with that one warning. A URI that can never work was refused when the plan was built.

The callback runs in the Tune driver process (callbacks are called by Tune's event loop, never
inside trial workers), so there is a single writer: SQLite is safe, and trials on other cluster
nodes log through the driver to a tracking server without being able to reach it themselves.
Ray's MLflowLoggerCallback is not used: it logs every float in a result as a metric (pids,
timestamps, `config/*`, even digit-only trial ids) and has no parent run. This one logs what
`vlpuda.tracking.content` selects, nests children under the search's parent, and shares the
idempotent Recorder with `vlpuda sync`.

Tune pickles its callbacks into the experiment folder (`tuner.pkl`) and restores them on
`Tuner.restore`; the MLflow client and the warning state are not pickled but rebuilt, so a
resumed search tries its tracking server again and finds its runs by their tags.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ray.tune import Callback

from vlpuda.tracking.content import SearchInfo
from vlpuda.tracking.front import FrontSummary, log_search_front
from vlpuda.tracking.runs import Recorder
from vlpuda.tracking.where import (
    Destination,
    experiment_page,
    limit_http_retries,
    server_problem,
    ui_command,
    write_destination,
)
from vlpuda.tunefiles import read_all

if TYPE_CHECKING:
    import optuna

Log = Callable[[str], None]
T = TypeVar("T")


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Guard:
    """Runs tracking calls; after the first failure it warns once and turns tracking off.

    Args:
        where: the destination, named in the warning.
        remedy: what the user can run to fill MLflow in afterwards.
        log: where the warning goes (stderr by default).
    """

    def __init__(self, where: str, remedy: str, log: Log = warn) -> None:
        self.where, self.remedy, self.log = where, remedy, log
        self.failure: str | None = None

    @property
    def enabled(self) -> bool:
        return self.failure is None

    def disable(self, reason: str) -> None:
        """Turn tracking off with one warning (later calls say nothing)."""
        if self.failure is not None:
            return
        self.failure = reason
        self.log(f"warning: MLflow tracking at {self.where} failed: {reason}. The search goes "
                 f"on and its results are kept in the Tune and Optuna storage; MLflow logging is "
                 f"off for the rest of it. Fill MLflow in later with: {self.remedy}")

    def run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """`call(*args, **kwargs)`, or None when tracking is off or the call fails."""
        if self.failure is not None:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as err:  # any failure of a view must not end the search
            self.disable(_describe(err))
            return None


def _describe(err: Exception) -> str:
    """The exception in one line: MLflow's messages can carry whole tracebacks."""
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(err).__name__}: {first[:300]}" if first else type(err).__name__


# ---- the Tune callback ------------------------------------------------------------------------


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


# ---- the driver's tracker ---------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, flush=True)


class SearchTracker:
    """One search's MLflow logging: the parent run, the Tune callback, the front at the end.

    Build it with `open` (or `for_plan`); the constructor only stores its parts.
    """

    def __init__(self, info: SearchInfo, dest: Destination, guard: Guard,
                 recorder: Recorder | None, ray_storage: str | None, log: Log = _say) -> None:
        self.info, self.dest, self.guard = info, dest, guard
        self.recorder = recorder
        self.ray_storage = ray_storage
        self.log = log
        self._callback: TrackingCallback | None = None

    # ---- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, info: SearchInfo, dest: Destination, ray_storage: str | None = None,
             log: Log = _say, warn_log: Log = warn) -> SearchTracker:
        """Start (or find again) the search's parent run; never raises on a tracking failure.

        Args:
            info: the search (see vlpuda.search.tracked.search_info).
            dest: where to log (the plan's tracking.destination, see where.plan_tracking).
            ray_storage: Tune's storage path, read at `finish` for per-task fronts.
            log: where progress lines go; warn_log: where the one warning goes.
        """
        limit_http_retries()
        run_dir = Path(info.run_dir)
        write_destination(run_dir, dest)
        guard = Guard(dest.uri, sync_command(info.run_dir), warn_log)
        problem = server_problem(dest)
        if problem is not None:
            guard.disable(problem)
            return cls(info, dest, guard, None, ray_storage, log)
        recorder = guard.run(cls._connect, info, dest)
        tracker = cls(info, dest, guard, recorder, ray_storage, log)
        if recorder is not None:
            log(f"MLflow: logging to experiment {info.experiment!r} at {dest.uri}, parent run "
                f"{recorder.parent_id}")
        return tracker

    @staticmethod
    def _connect(info: SearchInfo, dest: Destination) -> Recorder:
        from mlflow import MlflowClient

        recorder = Recorder(MlflowClient(dest.uri), info, dest)
        recorder.open_parent()
        recorder.client.update_run(recorder.parent_id, status="RUNNING")
        return recorder

    # ---- during the search --------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.guard.enabled

    @property
    def parent_run_id(self) -> str | None:
        return self.recorder.parent_id if self.recorder else None

    def tune_callback(self) -> TrackingCallback:
        """The ray.tune.Callback for RunConfig(callbacks=[...]); it shares this tracker's
        parent run and its one warning."""
        if self._callback is None:
            self._callback = TrackingCallback(self.info, self.dest, self.guard, self.recorder)
        return self._callback

    # ---- at the end ---------------------------------------------------------------------------
    def finish(self, study: optuna.Study, finished: bool = True) -> FrontSummary | None:
        """Log the front, the hypervolume history and the pareto tags on the parent run, close
        it, and print how to open the UI (or how to fill MLflow in, if tracking failed).

        Args:
            study: the search's Optuna study (all its trials, earlier runs' included).
            finished: False when the search stopped before all trials ran (the parent stays
                RUNNING, as Tune's experiment does).
        """
        summary = None
        if self.recorder is not None and self.guard.enabled:
            tune_trials = self.guard.run(read_all, self.ray_storage) if self.ray_storage else {}
            last_results = {key: trial.last for key, trial in (tune_trials or {}).items()}
            summary = self.guard.run(log_search_front, self.recorder, study, last_results)
            if summary is not None and finished:
                self.guard.run(self.recorder.mark_parent, "FINISHED")
        if self.guard.enabled and summary is not None:
            page = experiment_page(self.recorder.experiment_id,
                                   self.dest.uri if self.dest.is_http else None)
            self.log(f"MLflow: front ({summary.front_size} of {summary.complete} complete "
                     f"trials) and hypervolume logged on parent run {self.parent_run_id}; "
                     f"open the UI with: {ui_command(self.dest)} and browse {page}")
        else:
            self.log(f"MLflow: tracking was off for part of this search; fill it in with: "
                     f"{sync_command(self.info.run_dir)}, then open the UI with: "
                     f"{ui_command(self.dest)}")
        return summary
