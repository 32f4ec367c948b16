"""SearchTracker: what the search driver calls to log a search to MLflow.

    tracker = SearchTracker.for_plan(plan, experiment)          # before tuner.fit()
    run_config = RunConfig(callbacks=[..., tracker.tune_callback()])
    results = tuner.fit()
    tracker.finish(study)                                        # front, hypervolume, tags

Opening never fails on a tracking problem: an unreachable server or a broken database prints one
warning and the tracker turns itself off (the search's results stay in Tune and Optuna storage,
and `vlpuda sync RUN_DIR` fills MLflow in later). Only a URI that can never work (a typo'd
scheme, an in-memory database) raises, before Ray starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vlpuda.tracking.callback import TrackingCallback, sync_command
from vlpuda.tracking.describe import SearchInfo, search_info
from vlpuda.tracking.destination import (
    Destination,
    limit_http_retries,
    resolve_destination,
    server_problem,
    ui_command,
    write_destination,
)
from vlpuda.tracking.guard import Guard, Log, warn
from vlpuda.tracking.parent import FrontSummary, log_search_front
from vlpuda.tracking.runs import Recorder
from vlpuda.tracking.tunefiles import read_all
from vlpuda.tracking.views import experiment_page

if TYPE_CHECKING:
    import optuna

    from vlpuda.search.settings import SearchPlan


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
            info: the search (see describe.search_info).
            dest: where to log (see destination.resolve_destination).
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

    @classmethod
    def for_plan(cls, plan: SearchPlan, tune_experiment: str, tracking_uri: str | None = None,
                 experiment: str | None = None, log: Log = _say) -> SearchTracker:
        """The tracker for a validated search plan (the driver's entry point).

        Args:
            plan: the search.
            tune_experiment: the Tune experiment name of this run (the manifest's `experiment`).
            tracking_uri: None for `<run_dir>/mlflow.db`, or a server / database URL.
            experiment: the MLflow experiment; default: the search's name.

        Raises:
            TrackingError: for a tracking URI that can never work.
        """
        dest = resolve_destination(tracking_uri, plan.run_dir)
        return cls.open(search_info(plan, tune_experiment, experiment), dest,
                        plan.ray_storage, log)

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
            summary = self.guard.run(log_search_front, self.recorder, study, tune_trials or {})
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


def open_search_tracker(plan: SearchPlan, tune_experiment: str, log: Log = _say
                        ) -> SearchTracker | None:
    """The tracker the preset's `tracking:` section asks for, or None when it turns tracking off.

    Raises:
        ConfigError: for a bad tracking section (checked again here; the CLI checks it first).
    """
    from vlpuda.tracking.settings import tracking_settings

    settings = tracking_settings(plan.raw, plan.source)
    if not settings.enabled:
        log("MLflow tracking is off (tracking.enabled: false); results are in the run dir")
        return None
    return SearchTracker.for_plan(plan, tune_experiment, settings.effective_uri(),
                                  settings.experiment, log)
