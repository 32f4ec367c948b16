"""OptunaSearch for the accuracy-vs-storage front: samplers by name, pruning of early-stopped
trials, and a study that stays consistent across crashes.

Three behaviours of Ray's OptunaSearch are corrected here
(docs/search.md#two-objectives-in-optuna):

* When ASHA or a Stopper ends a trial, Tune reports it as *complete* with its partial values, and
  those cheap trials would land on the front. Here a trial that did not run every epoch, or that
  stores more than the budget, is told to Optuna as PRUNED; only full-length trials form the front.
* A trial that errored after reporting some epochs would also be told COMPLETE: it is a FAIL.
* After a SIGKILL the searcher is restored from a snapshot older than the database, so trials asked
  after the snapshot stay RUNNING forever, and trials finished after it are told twice. `restore`
  marks the orphans FAIL; completion skips trials the database already finished.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from vlpuda.objectives import (
    EXPERIMENT,
    KEPT_METRICS,
    LADDER,
    METRICS,
    MODES,
    OBJECTIVE,
    STOP_DETAIL,
    STOP_REASON,
    TUNE_TRIAL_ID,
    trial_outcome,
)
from vlpuda.search.moasha import stop_reason
from vlpuda.search.study import fail_running_trials
from vlpuda.trainables.ladder import parse_ladder
from vlpuda.trainables.prune import prune_training_state

logger = logging.getLogger(__name__)


class ParetoOptunaSearch(OptunaSearch):
    """OptunaSearch over [objective, stored_params] that tells Optuna only full-length trials.

    Args:
        space: a define-by-run search space (vlpuda.spaces.SearchSpace).
        full_epochs: the epochs a trial must reach to count as complete.
        experiment: the Tune experiment's name, recorded on every trial this searcher asks for.
        stored_params_budget: trials that end above it are PRUNED; None for no budget.
        metrics: the result keys of the two objectives (SearchPlan.objectives), max then min.
        **kwargs: passed to OptunaSearch (points_to_evaluate, sampler, study_name, storage).
    """

    def __init__(self, space, *, full_epochs: int, experiment: str,
                 stored_params_budget: int | None = None,
                 metrics: tuple[str, ...] = METRICS, **kwargs: Any) -> None:
        self._metrics = tuple(metrics)  # before OptunaSearch sets the study up (_setup_study)
        super().__init__(space, metric=list(metrics), mode=list(MODES), **kwargs)
        self._full_epochs = full_epochs
        self._experiment = experiment
        self._budget = stored_params_budget
        self.orphans_failed: list[int] = []
        self._scheduler = None  # read for its stop_log; never pickled with this searcher

    def stop_log_of(self, scheduler) -> None:
        """Record, on each trial the scheduler stops, the rung and rank that stopped it."""
        self._scheduler = scheduler

    def save(self, checkpoint_path: str) -> None:
        # The scheduler travels in its own state (moasha.SchedulerState); restore() updates
        # __dict__, so leaving the key out keeps the live link of the restored Tuner.
        link = self.__dict__.pop("_scheduler", None)
        try:
            super().save(checkpoint_path)
        finally:
            self._scheduler = link

    def _setup_study(self, mode) -> None:
        super()._setup_study(mode)
        # Objective names in the storage: optuna-dashboard and `plot_pareto_front` show the
        # search's own objectives (target_acc or proxy_bnm_best, and stored_params) instead of
        # "Objective 0" / "Objective 1".
        if self._ot_study.metric_names != list(self._metrics):
            with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names(list(self._metrics))

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr(EXPERIMENT, self._experiment)
            # Now, not only at completion: the tracker names the trial's run by its number.
            ot_trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
            ot_trial.set_user_attr(OBJECTIVE, self._metrics[0])
        return config

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def _stored(self, number: int) -> optuna.trial.FrozenTrial:
        """The trial as the database has it now (numbers index a study's trials)."""
        return self._ot_study.get_trials(deepcopy=False)[number]

    def _outcome(self, result: dict | None, error: bool
                 ) -> tuple[TrialState, str, list[float] | None]:
        """How the trial counts (trial_outcome), and its values when COMPLETE."""
        state, reason = trial_outcome(result, error, self._full_epochs, self._budget,
                                      self._metrics)
        values = [float(result[m]) for m in self._metrics] if state == TrialState.COMPLETE else None
        return state, reason, values

    def _attrs(self, trial_id: str, result: dict | None, state: TrialState, reason: str
               ) -> dict[str, Any]:
        attrs: dict[str, Any] = {TUNE_TRIAL_ID: trial_id}
        if state != TrialState.COMPLETE:
            attrs[STOP_REASON] = reason
        log = getattr(self._scheduler, "stop_log", {})
        if state == TrialState.PRUNED and (detail := stop_reason(log.get(trial_id))):
            attrs[STOP_DETAIL] = detail
        attrs.update({k: result[k] for k in KEPT_METRICS if result and result.get(k) is not None})
        if state == TrialState.COMPLETE and (ladder := parse_ladder(result or {})):
            attrs[LADDER] = ladder  # derived front points: never told to Optuna as trials
        return attrs

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id not in self._ot_trials:
            return
        stored = self._stored(self._ot_trials[trial_id].number)
        told_before = trial_id in self._completed_trials or stored.state.is_finished()
        self._completed_trials.add(trial_id)
        if told_before:  # by this searcher, or after the snapshot it was restored from
            self._record_rerun(trial_id, stored, result, error)
            return
        state, reason, values = self._outcome(result, error)
        try:
            for key, value in self._attrs(trial_id, result, state, reason).items():
                self._ot_trials[trial_id].set_user_attr(key, value)
            self._ot_study.tell(self._ot_trials[trial_id], values, state=state)
        except Exception as err:  # a storage hiccup must not end the search
            logger.warning("could not record trial %s in the study: %s", trial_id, err)
            return
        self._prune(state, result)

    @staticmethod
    def _prune(state: TrialState, result: dict | None) -> None:
        """A trial the study holds as complete or pruned is never resumed: its checkpoint keeps
        the deltas and metrics, not the dense optimizer state (trainables/prune.py)."""
        if state in (TrialState.COMPLETE, TrialState.PRUNED) and result:
            try:
                prune_training_state(result.get("checkpoint_path"))
            except OSError as err:  # disk housekeeping must not end the search
                logger.warning("could not prune %s: %s", result.get("checkpoint_path"), err)

    def _record_rerun(self, trial_id: str, stored: optuna.trial.FrozenTrial,
                      result: dict | None, error: bool) -> None:
        """A trial that had failed and now finished on resume (resume_errored): its result is
        added as a new study trial with the same parameters rather than lost."""
        state, reason, values = self._outcome(result, error)
        if stored.state != TrialState.FAIL or state == TrialState.FAIL:
            return
        attrs = {**self._attrs(trial_id, result, state, reason), "rerun_of": stored.number}
        try:
            self._ot_study.add_trial(optuna.trial.create_trial(
                state=state, params=stored.params, distributions=stored.distributions,
                values=values, user_attrs=attrs))
        except Exception as err:
            logger.warning("could not record the rerun of trial %s: %s", trial_id, err)
            return
        self._prune(state, result)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        # Trials this snapshot knows and has not finished will be resumed by Tune; any other
        # RUNNING trial was asked after the snapshot and lost with the crashed driver.
        live = {trial.number for tid, trial in self._ot_trials.items()
                if tid not in self._completed_trials}
        self.orphans_failed = fail_running_trials(self._ot_study, self._experiment, keep=live,
                                                  untagged=True)
        if self.orphans_failed:
            logger.warning("marked %d orphaned RUNNING trial(s) FAIL: %s",
                           len(self.orphans_failed), self.orphans_failed)
