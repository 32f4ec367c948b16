"""OptunaSearch for the accuracy-vs-storage front: samplers by name, pruning of early-stopped
trials, and a study that stays consistent across crashes.

Three behaviours of Ray's OptunaSearch are corrected here (research/ray_stack.md section 2):

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
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from vlpuda.search.settings import METRICS, MODES

logger = logging.getLogger(__name__)

# Optuna names the reason a trial was pruned in this user attribute.
STOP_REASON = "stopped_by"
TUNE_TRIAL_ID = "tune_trial_id"
# Result keys kept on each Optuna trial, so the front table can say where a trial's delta is.
KEPT_METRICS = ("target_acc_last", "epoch", "delta_bytes", "checkpoint_path")


def make_sampler(name: str, seed: int, num_samples: int) -> optuna.samplers.BaseSampler:
    """The sampler called `name` (tpe, nsga2, random, gp), seeded."""
    if name == "tpe":
        # Optuna 5 defaults to constant_liar=True, which keeps parallel trials apart.
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        # NSGA-II's default population of 50 would make a short search purely random.
        population = max(4, min(50, num_samples // 4))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for a database URL (SQLite, PostgreSQL, MySQL: anything SQLAlchemy
    reaches)."""
    return optuna.storages.RDBStorage(url)


def fail_running_trials(study: optuna.Study, keep: set[int] | None = None) -> list[int]:
    """Mark every RUNNING trial of `study` FAIL, except the numbers in `keep`; returns the numbers
    marked. Only call this when nothing else is running those trials."""
    marked = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if keep and trial.number in keep:
            continue
        study.tell(trial.number, state=TrialState.FAIL)
        marked.append(trial.number)
    return marked


class ParetoOptunaSearch(OptunaSearch):
    """OptunaSearch over [target_acc, stored_params] that tells Optuna only full-length trials.

    Args:
        space: a define-by-run search space (vlpuda.spaces.SearchSpace).
        full_epochs: the epochs a trial must reach to count as complete.
        stored_params_budget: trials that end above it are PRUNED; None for no budget.
        **kwargs: passed to OptunaSearch (points_to_evaluate, sampler, study_name, storage).
    """

    def __init__(self, space, *, full_epochs: int, stored_params_budget: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(space, metric=list(METRICS), mode=list(MODES), **kwargs)
        self._full_epochs = full_epochs
        self._budget = stored_params_budget
        self.orphans_failed: list[int] = []

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def _verdict(self, result: dict | None, error: bool) -> tuple[TrialState, list | None, str]:
        """The state to tell Optuna, the values (for COMPLETE) and why."""
        if error:
            return TrialState.FAIL, None, "error"
        if not result or any(result.get(m) is None for m in METRICS):
            return TrialState.FAIL, None, "no metrics"
        if self._budget is not None and result["stored_params"] > self._budget:
            return TrialState.PRUNED, None, "stored_params_budget"
        if result.get("epoch", 0) < self._full_epochs:
            return TrialState.PRUNED, None, "early_stopping"
        return TrialState.COMPLETE, [float(result[m]) for m in METRICS], "complete"

    def _finished_in_storage(self, number: int) -> bool:
        trial = self._ot_study.get_trials(deepcopy=False)[number]
        return trial.state.is_finished()

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        self._completed_trials.add(trial_id)
        if self._finished_in_storage(ot_trial.number):
            return  # finished after the snapshot this searcher was restored from
        state, values, reason = self._verdict(result, error)
        try:
            ot_trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
            if state != TrialState.COMPLETE:
                ot_trial.set_user_attr(STOP_REASON, reason)
            for key in KEPT_METRICS:
                if result and result.get(key) is not None:
                    ot_trial.set_user_attr(key, result[key])
            self._ot_study.tell(ot_trial, values, state=state)
        except Exception as err:  # a storage hiccup must not end the search
            logger.warning("could not record trial %s in the study: %s", trial_id, err)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        # Trials this snapshot knows and has not finished will be resumed by Tune; any other
        # RUNNING trial was asked after the snapshot and lost with the crashed driver.
        live = {t.number for tid, t in self._ot_trials.items() if tid not in self._completed_trials}
        self.orphans_failed = fail_running_trials(self._ot_study, keep=live)
        if self.orphans_failed:
            logger.warning("marked %d orphaned RUNNING trial(s) FAIL: %s",
                           len(self.orphans_failed), self.orphans_failed)
