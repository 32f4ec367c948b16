"""MOASHA for Ray Tune: asynchronous successive halving that ranks by the whole Pareto front.

Ray's ASHA cuts each rung by one metric, and on an accuracy-vs-storage search that metric is
accuracy: at every rung it stops the sparse, less accurate trials that make up the front's
low-storage half. This scheduler keeps ASHA's bookkeeping (rungs at grace * eta^k epochs, one
final decision per trial and rung, asynchronous: a trial is judged against whatever the rung
holds when it arrives) and replaces the cut with `rungs.rung_decision`, non-dominated sorting
plus an epsilon-net over the search's objectives.

Stopping only ends a trial: ParetoOptunaSearch tells Optuna every trial short of the full epochs
as PRUNED, so nothing this scheduler stops reaches the front; it reads `stop_log` to record why.

Three things Ray's own ASHA gets wrong for this search, and how they are handled here:
* Time is the loop's `epoch`, never `training_iteration`: a trial retried after a lost node
  restarts Tune's iteration count but resumes its epochs from its Train checkpoint.
* An epoch at or below the last one seen (a retry replaying epochs, a final re-report) is
  ignored: it is counted once and never judged twice.
* Ray never saves a scheduler with the experiment (ray-project/ray#30838), so `--resume` would
  bring back empty rungs. `SchedulerState`, a Tune Callback, carries `state_dict()` in the
  experiment checkpoint, which Tune restores before it re-adds the trials.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray.tune.callback import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from vlpuda.search.rungs import rung_decision, rung_levels, signed_vector

logger = logging.getLogger(__name__)

TIME_ATTR = "epoch"
STATE_VERSION = 1
# Objectives counted on a log axis: ten times fewer parameters is the same gain anywhere.
LOG_AXIS_METRICS = ("stored_params",)


class MOASHAScheduler(FIFOScheduler):
    """Stopping-type multi-objective ASHA (docs/search.md#early-stopping-moasha).

    Args:
        metrics: the search's objectives, first objective first (search.settings.METRICS).
        modes: "max" or "min" per objective.
        max_t: the full epochs of a trial.
        grace_period: epochs before the first rung.
        reduction_factor: eta; about 1/eta of the trials reaching a rung continue.
    """

    _supports_buffered_results = False  # one decision per epoch report

    def __init__(self, metrics: Sequence[str], modes: Sequence[str], *, max_t: int,
                 grace_period: int, reduction_factor: float = 3.0) -> None:
        # Tune checks `metric` (a string) is in every result; the full list is kept here.
        super().__init__()
        self._metric, self._mode = metrics[0], modes[0]
        self.metrics, self.modes = tuple(metrics), tuple(modes)
        self.log_axes = tuple(m in LOG_AXIS_METRICS for m in self.metrics)
        self.max_t, self.grace_period = int(max_t), int(grace_period)
        self.reduction_factor = float(reduction_factor)
        self.levels = rung_levels(self.grace_period, self.reduction_factor, self.max_t)
        self.rungs: dict[int, dict[str, list[float]]] = {level: {} for level in self.levels}
        self.last_epoch: dict[str, int] = {}
        self.skipped: dict[str, list[int]] = {}
        self.stop_log: dict[str, dict[str, Any]] = {}
        self._unscored: set[str] = set()

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # A multi-objective search passes no metric; its objectives were given at construction.
        return metric is None or metric == self.metrics[0]

    # ---- the rule ----------------------------------------------------------------------------
    def decide(self, trial_id: str, result: dict[str, Any]) -> str:
        """CONTINUE or STOP for one result; records it at the rung it reaches. Pure bookkeeping
        on the trial id, so a simulator can drive it without Tune."""
        epoch = result.get(TIME_ATTR)
        vector = signed_vector([result.get(m) for m in self.metrics], self.modes, self.log_axes)
        if epoch is None or vector is None:
            if trial_id not in self._unscored:
                self._unscored.add(trial_id)
                logger.warning("MOASHA: trial %s reported no finite %s/%s; it is not ranked",
                               trial_id, TIME_ATTR, "/".join(self.metrics))
            return TrialScheduler.CONTINUE
        epoch = int(epoch)
        if epoch <= self.last_epoch.get(trial_id, 0):
            return TrialScheduler.CONTINUE  # replayed or repeated: counted once
        self.last_epoch[trial_id] = epoch
        skipped = self.skipped.setdefault(trial_id, [])
        open_levels = [lv for lv in self.levels
                       if lv <= epoch and trial_id not in self.rungs[lv] and lv not in skipped]
        if not open_levels:
            return TrialScheduler.CONTINUE
        level = open_levels[-1]
        if epoch > level:
            # Reached past the rung without reporting at it (restarted from an older snapshot
            # that skipped it): it would be judged on more epochs than its peers there.
            skipped.append(level)
            return TrialScheduler.CONTINUE
        recorded = list(self.rungs[level].values())
        self.rungs[level][trial_id] = list(vector)
        if not recorded:
            return TrialScheduler.CONTINUE
        continues, position, candidates, front = rung_decision(recorded, vector,
                                                               self.reduction_factor)
        if continues:
            return TrialScheduler.CONTINUE
        self.stop_log[trial_id] = {"reason": "moasha_rung", "rung": level, "epoch": epoch,
                                   "position": position + 1, "of": candidates,
                                   "front": front + 1, "reduction_factor": self.reduction_factor}
        return TrialScheduler.STOP

    # ---- Tune hooks --------------------------------------------------------------------------
    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self.decide(trial.trial_id, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        epoch = (result or {}).get(TIME_ATTR) or 0
        if epoch < self.max_t and trial.trial_id not in self.stop_log:
            # Ended early by something else (the storage budget Stopper).
            self.stop_log[trial.trial_id] = {"reason": "external", "epoch": epoch}

    def debug_string(self) -> str:
        held = ", ".join(f"{lv}: {len(self.rungs[lv])}" for lv in self.levels)
        return (f"MOASHA over {'/'.join(self.metrics)}: rungs (epoch: trials) {held}; "
                f"{sum(1 for e in self.stop_log.values() if e['reason'] == 'moasha_rung')} "
                "stopped")

    # ---- persistence -------------------------------------------------------------------------
    def _parameters(self) -> dict[str, Any]:
        return {"metrics": list(self.metrics), "modes": list(self.modes), "max_t": self.max_t,
                "grace_period": self.grace_period, "reduction_factor": self.reduction_factor}

    def state_dict(self) -> dict[str, Any]:
        """Everything decided so far, JSON-able (rung keys become strings in JSON)."""
        return {"version": STATE_VERSION, "parameters": self._parameters(),
                "rungs": {str(lv): dict(trials) for lv, trials in self.rungs.items()},
                "last_epoch": dict(self.last_epoch),
                "skipped": {tid: list(levels) for tid, levels in self.skipped.items()},
                "stop_log": dict(self.stop_log)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the state with a saved one made by a scheduler with the same parameters."""
        if state.get("version") != STATE_VERSION or state.get("parameters") != self._parameters():
            raise ValueError(f"MOASHA state for {state.get('parameters')} cannot restore a "
                             f"scheduler with {self._parameters()}")
        self.rungs = {lv: {} for lv in self.levels}
        for level, trials in state["rungs"].items():
            self.rungs[int(level)] = {tid: list(v) for tid, v in trials.items()}
        self.last_epoch = {tid: int(e) for tid, e in state["last_epoch"].items()}
        self.skipped = {tid: [int(lv) for lv in lvs] for tid, lvs in state["skipped"].items()}
        self.stop_log = {tid: dict(entry) for tid, entry in state["stop_log"].items()}

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.state_dict()))

    def restore(self, checkpoint_path: str) -> None:
        self.load_state_dict(json.loads(Path(checkpoint_path).read_text()))


class LoggedASHA(ASHAScheduler):
    """Ray's ASHA on the first objective alone, on epochs, writing the same stop log as MOASHA
    (the rung and the trial's rank there) so a pruned trial says why it stopped."""

    def __init__(self, metric: str, mode: str, *, max_t: int, grace_period: int,
                 reduction_factor: float) -> None:
        super().__init__(time_attr=TIME_ATTR, metric=metric, mode=mode, max_t=max_t,
                         grace_period=grace_period, reduction_factor=reduction_factor)
        self.stop_log: dict[str, dict[str, Any]] = {}

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        epoch = result.get(TIME_ATTR, 0)
        if action != TrialScheduler.STOP or epoch >= self._max_t:
            return action
        bracket = self._trial_info[trial.trial_id]
        # Rungs are held highest first: the first one <= epoch holding the trial judged it.
        for milestone, recorded in bracket._rungs:
            if milestone <= epoch and trial.trial_id in recorded:
                others = [v for tid, v in recorded.items() if tid != trial.trial_id]
                value = recorded[trial.trial_id]
                cutoff = bracket.cutoff({i: v for i, v in enumerate(others)})
                self.stop_log[trial.trial_id] = {
                    "reason": "asha_rung", "rung": int(milestone), "epoch": int(epoch),
                    "position": 1 + sum(v > value for v in others), "of": len(recorded),
                    "cutoff": float(self._metric_op * cutoff), "metric": self._metric}
                break
        return action


def stop_reason(entry: dict[str, Any] | None) -> str | None:
    """A scheduler's stop-log entry in words: 'moasha rung 5: 4th of 7 (front 2)'."""
    if not entry:
        return None
    if entry.get("reason") == "moasha_rung":
        return (f"moasha rung {entry['rung']}: {_ordinal(entry['position'])} of {entry['of']} "
                f"(front {entry['front']}, top 1/{entry['reduction_factor']:g} continue)")
    if entry.get("reason") == "asha_rung":
        return (f"asha rung {entry['rung']}: {_ordinal(entry['position'])} of {entry['of']} by "
                f"{entry['metric']}, beyond the cutoff {entry['cutoff']:.4g}")
    if entry.get("reason") == "external":
        return f"stopped at epoch {entry['epoch']} by a stopper"
    return None


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class SchedulerState(Callback):
    """Carries a scheduler's state in Tune's experiment checkpoint (Tune saves callback states
    with every snapshot and restores them on Tuner.restore, before the trials come back).

    After `Tuner.restore` this callback and the scheduler come from the same pickled Tuner, so
    they are still one pair. Callback states are matched by their index in RunConfig.callbacks:
    keep this one at the same place.
    """

    def __init__(self, scheduler: MOASHAScheduler) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict | None:
        return {"scheduler": self.scheduler.state_dict()}

    def set_state(self, state: dict) -> None:
        if state and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
