"""The search driver: run a search, resume one, and finish it with the front of its study.

    plan (validated) -> ray.init / connect -> assets built once per task, ray.put as numpy
    -> Tuner(run_trial, ParetoOptunaSearch, ASHA?, budget Stopper?) -> fit -> front of the study

The steps live beside it: Ray and its resource maths in `cluster`, the shared assets in `assets`,
the searcher and the Tuner in `tuner`, the run directory's manifest in `manifest`.

The study lives in persistent storage (SQLite in the run dir unless the preset names a database),
so it survives crashes and a later search under the same name extends it. `resume_search` restores
the Tune experiment (searcher state included) and leaves no study trial RUNNING.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vlpuda.errors import VlpudaError
from vlpuda.front.table import format_front, write_front
from vlpuda.front.trials import Front, front_of
from vlpuda.layout import SEARCH_KEYS, read_manifest, write_manifest
from vlpuda.search.assets import build_assets, share
from vlpuda.search.cluster import (
    Log,
    derive_concurrency,
    describe,
    driver_resources,
    ray_running,
    say,
    worker_demand,
)
from vlpuda.search.manifest import (
    abandon,
    check_extension,
    plan_study,
    search_manifest,
    with_status,
)
from vlpuda.search.plan import SearchPlan, plan_from_manifest
from vlpuda.search.study import (
    experiment_counts,
    fail_running_trials,
    new_experiment_name,
    tune_trial_numbers,
)
from vlpuda.search.tuner import existing_trials, make_searcher, make_trainable, make_tuner

if TYPE_CHECKING:
    from vlpuda.tracking.live import SearchTracker


def run_search(plan: SearchPlan, log: Log = say) -> Front:
    """Run a new search (or extend the study of an earlier one under the same name)."""
    previous = check_extension(plan)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    tasks, assets = build_assets(plan, log)
    with ray_running(plan.settings, log):
        import ray

        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        concurrency = derive_concurrency(plan.settings, ray.cluster_resources(), nodes)
        driver = driver_resources(plan.settings, ray.cluster_resources())
        log(f"each trial reserves {describe(driver)} for its driver and "
            f"{plan.settings.workers_per_trial} x "
            f"{describe(worker_demand(plan.settings))} for its workers")
        refs = share(assets)
        trials_before = existing_trials(plan)
        if trials_before:
            log(f"extending study {plan.study_name!r} ({trials_before} trials so far)"
                + (f", last run {previous.get('experiment')}" if previous else ""))
        # The first trial of a new study trains the preset's (paper) defaults. They go in as
        # points_to_evaluate: OptunaSearch's evaluated_rewards is broken for two objectives.
        first = [] if trials_before else [plan.defaults_point]
        experiment = new_experiment_name()
        searcher = make_searcher(plan, experiment, first)
        # MLflow: a parent run now, a child per trial from the Tune driver, the front at the end.
        # Opened before the manifest says "running", so a tracking error leaves nothing to resume.
        from vlpuda.search.tracked import open_search_tracker

        tracker = open_search_tracker(plan, experiment, log)
        write_manifest(plan.run_dir, search_manifest(plan, experiment, "running"))
        log(f"running {plan.settings.num_samples} trials, up to {concurrency} at a time; "
            f"resume after an interruption with: vlpuda search --resume {plan.run_dir}")
        tuner = make_tuner(plan, make_trainable(plan, tasks, refs), searcher, concurrency,
                           experiment, (tracker.tune_callback(),) if tracker else ())
        results = fit_tracked(tuner, plan, tracker)
        return finish(plan, experiment, results, log, tracker)


def resume_search(run_dir: str | Path, log: Log = say) -> Front:
    """Continue a crashed or interrupted search from its run directory."""
    import ray.tune

    run_dir = Path(run_dir).expanduser().resolve()
    manifest = read_manifest(run_dir, SEARCH_KEYS)
    plan = plan_from_manifest(run_dir, manifest)
    experiment = manifest["experiment"]
    path = plan.ray_path(experiment)
    if not ray.tune.Tuner.can_restore(path):
        abandon(plan, manifest)
        raise VlpudaError(
            f"{path} holds no Tune state to resume (the search stopped before its first "
            f"snapshot); its unfinished trials are marked FAIL: run the search again (the same "
            f"--name extends study {plan.study_name!r})")
    tasks, assets = build_assets(plan, log)
    with ray_running(plan.settings, log):
        refs = share(assets)
        log(f"resuming {experiment} from {path}")
        write_manifest(run_dir, with_status(manifest, "running"))
        # Unfinished and errored trials continue (each from its last Train checkpoint); the
        # searcher's state comes back from the experiment's snapshot.
        # The restored Tuner brings its MLflow callback back (it finds its runs by their tags);
        # this tracker writes the front at the end.
        from vlpuda.search.tracked import open_search_tracker

        tracker = open_search_tracker(plan, experiment, log)
        tuner = ray.tune.Tuner.restore(path, trainable=make_trainable(plan, tasks, refs),
                                       resume_unfinished=True, resume_errored=True)
        results = fit_tracked(tuner, plan, tracker)
        return finish(plan, experiment, results, log, tracker)


def fit_tracked(tuner, plan: SearchPlan, tracker: SearchTracker | None):
    """tuner.fit(); if it raises, MLflow still gets the front so far and the parent run stays
    open for `--resume` (Ctrl-C is not an exception here: Tune returns what it has)."""
    try:
        return tuner.fit()
    except Exception:
        if tracker is not None:  # never raises: a tracking failure only warns
            tracker.finish(plan_study(plan), finished=False)
        raise


def finish(plan: SearchPlan, experiment: str, results, log: Log = say,
           tracker: SearchTracker | None = None) -> Front:
    """Account for every trial, print the front and write it to the run dir. A finished run's
    leftover RUNNING study trials are marked FAIL; an interrupted one (Ctrl-C) is left to resume."""
    study = plan_study(plan)
    planned = plan.settings.num_samples
    if planned - results.num_terminated - results.num_errors <= 0:
        # Tune has finished every trial: one of ours still RUNNING in the study is an orphan.
        leftovers = fail_running_trials(study, experiment)
        if leftovers:
            log(f"{len(leftovers)} orphaned study trial(s) marked FAIL: {leftovers}")
    # Counted from the study, which records a trial once it has really ended (after Ctrl-C,
    # Tune calls its interrupted trials terminated).
    counts = experiment_counts(study, experiment)
    finished = counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"]  # orphans are no trials
    unfinished = max(planned - finished, 0)
    log(f"{finished} of {planned} planned trials finished ({counts['COMPLETE']} complete, "
        f"{counts['PRUNED']} pruned, {counts['FAIL']} failed)"
        + (f", {unfinished} not finished" if unfinished else ""))
    if unfinished:
        log(f"the search was interrupted: continue it with `vlpuda search --resume "
            f"{plan.run_dir}`; the front so far:")
    front = front_of(study.get_trials(deepcopy=False))
    log(format_front(front))
    paths = write_front(front, plan.run_dir)
    log(f"front written to {', '.join(str(p) for p in paths)}; "
        f"print it again with: vlpuda pareto {plan.run_dir}")
    if tracker is not None:  # never raises: a tracking failure only warns
        tracker.finish(study, finished=not unfinished)
    manifest = {**read_manifest(plan.run_dir), "trial_numbers": tune_trial_numbers(study)}
    write_manifest(plan.run_dir, with_status(manifest, "running" if unfinished else "finished"))
    return front
