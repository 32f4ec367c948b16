"""What a search fits: the trial function with the shared setup bound, the searcher over the plan's
study, and the Tuner with its scheduler, stopper and callbacks.
"""

from __future__ import annotations

from typing import Any

from vlpuda.search.cluster import driver_resources
from vlpuda.search.plan import SearchPlan
from vlpuda.search.study import make_sampler, open_storage


def make_trainable(plan: SearchPlan, tasks: tuple[dict[str, Any], ...], refs: list):
    """The trial function with the search's shared setup bound; references, not data."""
    import ray.tune

    from vlpuda.trainables.trial import TrialSetup, run_trial

    s = plan.settings
    setup = TrialSetup(tasks=tasks, num_workers=s.workers_per_trial,
                       cpus_per_worker=s.cpus_per_worker, gpus_per_trial=s.gpus_per_trial,
                       worker_resources=s.worker_resources, storage_path=plan.ray_path("train"),
                       sparsity_ladder=s.sparsity_ladder)
    trainable = ray.tune.with_parameters(run_trial, setup=setup, assets=refs)
    # Where the trial's driver runs (its Train workers get their own placement group).
    return ray.tune.with_resources(trainable, driver_resources(s, ray.cluster_resources()))


def existing_trials(plan: SearchPlan) -> int:
    """How many trials the plan's study already holds (0 when it does not exist yet)."""
    import optuna

    storage = open_storage(plan.storage)
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    return next((s.n_trials for s in summaries if s.study_name == plan.study_name), 0)


def make_searcher(plan: SearchPlan, experiment: str, first_points: list[dict[str, Any]]):
    from vlpuda.search.searcher import ParetoOptunaSearch

    s = plan.settings
    return ParetoOptunaSearch(
        plan.space,
        full_epochs=plan.epochs,
        experiment=experiment,
        stored_params_budget=s.stored_params_budget,
        metrics=plan.objectives[0],
        points_to_evaluate=first_points or None,
        sampler=make_sampler(s.sampler, s.seed, s.num_samples),
        study_name=plan.study_name,
        storage=open_storage(plan.storage),
    )


def make_tuner(plan: SearchPlan, trainable, searcher, concurrency: int, experiment: str,
               callbacks: tuple = ()):
    import ray.tune

    from vlpuda.search.moasha import MOASHAScheduler, SchedulerState
    from vlpuda.search.progress import ProgressLines
    from vlpuda.naming import TrialNumbers
    from vlpuda.search.stopping import StoredParamsBudget, make_scheduler

    s = plan.settings
    budget = s.stored_params_budget
    scheduler = make_scheduler(plan)
    searcher.stop_log_of(scheduler)  # so each pruned trial records the rung that stopped it
    # Ray never saves a scheduler with the experiment: this callback carries MOASHA's rungs.
    state = [SchedulerState(scheduler)] if isinstance(scheduler, MOASHAScheduler) else []
    return ray.tune.Tuner(
        trainable,
        tune_config=ray.tune.TuneConfig(
            search_alg=searcher,  # metric/mode lists live in the searcher: TuneConfig takes one
            scheduler=scheduler,
            num_samples=s.num_samples,
            max_concurrent_trials=concurrency,
        ),
        run_config=ray.tune.RunConfig(
            name=experiment,
            storage_path=plan.ray_storage,
            stop=StoredParamsBudget(budget) if budget else None,
            callbacks=[ProgressLines(tuple(d.name for d in plan.space.searched), plan.epochs,
                                     s.num_samples, budget, scheduler,
                                     TrialNumbers(plan.storage, plan.study_name),
                                     plan.objectives[0]),
                   *state, *callbacks],
            failure_config=ray.tune.FailureConfig(max_failures=s.max_failures),
            verbose=0,  # ProgressLines prints one line per event instead of Tune's tables
        ),
    )
