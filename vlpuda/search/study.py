"""The Optuna side of a search, without Ray: samplers, storage, crash cleanup, loading a study.

Kept free of Ray imports so `vlpuda pareto` and `vlpuda validate` start in a second. The run
directory and its manifest are vlpuda.layout's; the trials' user attributes and outcomes are
vlpuda.objectives'.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from vlpuda.errors import VlpudaError
from vlpuda.objectives import EXPERIMENT, STOP_REASON, TUNE_TRIAL_ID

# Experiment names carry their start time, which tells a crashed driver's unannotated trials.
EXPERIMENT_FORMAT = "tune-%Y%m%d-%H%M%S"


def make_sampler(name: str, seed: int, num_samples: int) -> optuna.samplers.BaseSampler:
    """The sampler called `name` (tpe, nsga2, random, gp), seeded."""
    if name == "tpe":
        # 5 random start-up trials instead of Optuna's 10: on benchmarks/sampler_efficiency.py
        # that reaches random search's 80-trial hypervolume within 40 trials on every table.
        # Optuna 5 defaults to constant_liar=True, which keeps parallel trials apart.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
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


def new_experiment_name() -> str:
    """A Tune experiment name for a search starting now."""
    return time.strftime(EXPERIMENT_FORMAT)


def experiment_started(experiment: str) -> datetime | None:
    """When an experiment named by `new_experiment_name` started (local time, as Optuna stores
    trial start times); None for a name of another form."""
    try:
        return datetime.strptime(experiment, EXPERIMENT_FORMAT)
    except ValueError:
        return None


# The STOP_REASON of a FAIL trial that no Tune trial ran: a driver asked Optuna for it and died (or
# Tune never started it). It is no planned trial, so the end-of-search summary does not count it.
ORPHANED = "orphaned"


def is_orphan_candidate(trial: optuna.trial.FrozenTrial, experiment: str,
                        untagged: bool = False) -> bool:
    """Whether a RUNNING trial belongs to `experiment`: it carries its name, or (with `untagged`)
    it carries none and started after the experiment did. The attribute is written just after
    Optuna creates the trial, so a driver killed in between leaves a RUNNING trial without it.
    Start times are the local times of the machine that asked for the trial: resume on a machine
    in the same time zone."""
    owner = trial.user_attrs.get(EXPERIMENT)
    if owner is not None:
        return owner == experiment
    started = experiment_started(experiment)
    return untagged and started is not None and trial.datetime_start is not None \
        and trial.datetime_start >= started


def fail_running_trials(study: optuna.Study, experiment: str,
                        keep: set[int] | None = None, untagged: bool = False) -> list[int]:
    """Mark the RUNNING trials that `experiment` asked for FAIL, except the numbers in `keep`;
    returns the numbers marked. Only call this when nothing is running them any more; claim
    untagged trials (see is_orphan_candidate) only after a crash, when no other driver of this
    search can be between asking for a trial and tagging it."""
    marked = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_orphan_candidate(trial, experiment, untagged) \
                or (keep and trial.number in keep):
            continue
        # Tagged while still RUNNING (a finished trial's attributes are frozen); Trial is
        # Optuna's handle for writing to a trial of a study by its storage id.
        optuna.trial.Trial(study, trial._trial_id).set_user_attr(STOP_REASON, ORPHANED)
        study.tell(trial.number, state=TrialState.FAIL)
        marked.append(trial.number)
    return marked


def experiment_counts(study: optuna.Study, experiment: str) -> dict[str, int]:
    """How many of the trials `experiment` asked for are in each state (COMPLETE, PRUNED, FAIL,
    RUNNING, ...), by state name; FAIL trials no Tune trial ran count under ORPHANED instead."""
    counts = {state.name: 0 for state in TrialState} | {ORPHANED: 0}
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get(EXPERIMENT) == experiment:
            orphan = trial.state == TrialState.FAIL \
                and trial.user_attrs.get(STOP_REASON) == ORPHANED
            counts[ORPHANED if orphan else trial.state.name] += 1
    return counts


def tune_trial_numbers(study: optuna.Study) -> dict[str, int]:
    """Tune trial id -> the Optuna trial number every output shows (a rerun has the last word),
    for the manifest: Tune's folders are named by the id, everything else by the number."""
    numbers = {}
    for trial in study.get_trials(deepcopy=False):
        tune_id = trial.user_attrs.get(TUNE_TRIAL_ID)
        if tune_id is not None:
            numbers[str(tune_id)] = trial.number
    return numbers


def missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL when it does not exist (opening it would create an empty one)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.is_file() else path


def load_study(manifest: dict[str, Any]) -> optuna.Study:
    """The study a manifest points to; never creates a storage that is not there."""
    missing = missing_sqlite_file(manifest["storage"])
    if missing is not None:
        raise VlpudaError(f"the study storage {missing} does not exist (search "
                          f"{manifest.get('name')!r} keeps its trials there): restore the file, "
                          "or point search.storage at where it moved")
    try:
        return optuna.load_study(study_name=manifest["study_name"],
                                 storage=open_storage(manifest["storage"]))
    except KeyError as err:  # optuna raises KeyError for a study name the storage lacks
        raise VlpudaError(f"study {manifest['study_name']!r} not found in "
                          f"{manifest['storage']}: {err}") from None
