"""The search's side of MLflow: what tracking is told about a search, as plain data.

tracking never sees a SearchPlan: this module turns the plan into a `SearchInfo` (the parent
run's name, params and tags) and hands it, with the destination the plan resolved once, to
vlpuda.tracking. The driver opens its tracker here; `vlpuda sync` builds the plan from the run
dir's manifest here and passes tracking the study and the infos.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlpuda.layout import SEARCH_KEYS, read_manifest
from vlpuda.objectives import METRICS
from vlpuda.search.plan import SearchPlan, plan_from_manifest
from vlpuda.search.stopping_settings import describe_stopping
from vlpuda.search.study import load_study
from vlpuda.tracking.content import (
    TAG_KIND,
    TAG_NOTE,
    TAG_RUN_DIR,
    TAG_RUN_NAME,
    TAG_SEARCH,
    TAG_STUDY,
    TAG_TASKS,
    SearchInfo,
    flat_params,
    git_commit,
    package_versions,
)

if TYPE_CHECKING:
    from vlpuda.tracking.live import SearchTracker

Log = Callable[[str], None]


def _say(message: str) -> None:
    print(message, flush=True)


def _space_params(plan: SearchPlan) -> dict[str, Any]:
    """What the space decides, under the training config's own names: a searched dimension
    as `searched: <range>`, a fixed one and a constant as the value every trial gets."""
    space = plan.space
    params: dict[str, Any] = {"space": space.name}
    for dim in space.dimensions:
        params[dim.name] = f"searched: {dim.describe()}" if dim.searched else dim.value
    params.update(space.constants)
    return params


def parent_params(plan: SearchPlan) -> dict[str, str]:
    """The whole resolved training config (flat names, as in configs), the search settings
    (`search.*`: sampler, budget, resources, ...) and the space's name. A key the space
    searches or fixes holds what the space says (`searched: float [1e-05, 0.01] log`, or the
    fixed value), never the preset's value, which no trial used."""
    params = flat_params(plan.tasks[0].model_dump())
    if len(plan.tasks) > 1:
        # One config per task differs only in src/tgt: the pairs say which.
        params.pop("src", None), params.pop("tgt", None)
    params.update(flat_params(plan.settings.model_dump(), "search."))
    # Where things live, resolved (as written they may be relative or unset; a back-fill
    # passes the run dir absolute, and both must record the same).
    params.update({"search.run_dir": str(plan.run_dir), "search.storage": plan.storage,
                   "search.storage_path": plan.ray_storage, "search.name": plan.name})
    params["search.tasks"] = ",".join(f"{t.src}->{t.tgt}" for t in plan.tasks)
    params["search.epochs"] = str(plan.epochs)
    # Which scheduler ran (asha: true and the moasha default resolved) and on what.
    stopping = plan.settings.early_stopping
    params["search.scheduler"] = stopping.effective_method
    params["search.scheduler_detail"] = describe_stopping(stopping, plan.grace_period,
                                                          plan.epochs, METRICS)[:500]
    params.update(flat_params(_space_params(plan)))
    return params


def search_info(plan: SearchPlan, tune_experiment: str, experiment: str | None = None
                ) -> SearchInfo:
    """The SearchInfo of one run (`tune_experiment`) of the search `plan` describes."""
    from vlpuda.trainables.reporting import task_key

    first = plan.tasks[0]
    tasks = tuple(task_key(t) for t in plan.tasks)
    pairs = tuple((str(t.src), str(t.tgt)) for t in plan.tasks)
    key = f"{plan.name}/{tune_experiment}"
    tags = {
        TAG_KIND: "search",
        TAG_SEARCH: key,
        TAG_STUDY: plan.study_name,
        TAG_RUN_DIR: str(plan.run_dir),
        TAG_RUN_NAME: plan.name,
        TAG_TASKS: ",".join(tasks),
        "tune_experiment": tune_experiment,
        "benchmark": first.benchmark,
        "model": first.model,
        "sampler": plan.settings.sampler,
        "git_commit": git_commit(),
        **{f"version.{name}": version for name, version in package_versions().items()},
        TAG_NOTE: (f"Search {plan.name} over {', '.join(f'{s} -> {t}' for s, t in pairs)} "
                   f"({first.model}). The accuracy / stored-parameters front is in the "
                   "artifacts under pareto/ (table, CSV, figure); trials are nested below, "
                   "tagged pareto=true when they lie on it."),
    }
    return SearchInfo(
        key=key, name=plan.name, experiment=experiment or plan.name, study=plan.study_name,
        run_dir=str(plan.run_dir), tasks=tasks, task_pairs=pairs, epochs=plan.epochs,
        budget=plan.settings.stored_params_budget, benchmark=first.benchmark, model=first.model,
        params=parent_params(plan), tags=tags, storage=plan.storage,
    )


def open_search_tracker(plan: SearchPlan, tune_experiment: str, log: Log = _say
                        ) -> SearchTracker | None:
    """The tracker the plan's tracking section asks for (its parent run opened), or None when it
    turns tracking off. Never raises on a tracking failure: see SearchTracker.open."""
    from vlpuda.tracking.live import SearchTracker  # Ray's Callback: only where Ray runs

    tracking = plan.tracking
    if not tracking.enabled:
        log("MLflow tracking is off (tracking.enabled: false); results are in the run dir")
        return None
    return SearchTracker.open(search_info(plan, tune_experiment, tracking.experiment),
                              tracking.destination, plan.ray_storage, log)


def sync_search(run_dir: str | Path, tracking_uri: str | None = None,
                experiment: str | None = None, log: Log = print) -> Any:
    """`vlpuda sync RUN_DIR`: bring MLflow up to date with a search's run directory (see
    vlpuda.tracking.backfill.sync_run_dir; this reads the manifest, study and plan for it).

    Raises:
        TrackingError: when the tracking server cannot be reached.
        VlpudaError: when run_dir is not a search's run directory.
    """
    from vlpuda.tracking.backfill import sync_run_dir

    run_dir = Path(run_dir).expanduser().resolve()
    manifest = read_manifest(run_dir, SEARCH_KEYS)
    study = load_study(manifest)  # before anything else: a missing study creates nothing
    # Data paths are not checked: the data may have moved since; only names and settings matter.
    plan = plan_from_manifest(run_dir, manifest, check_paths=False)
    experiment = experiment or plan.tracking.experiment
    return sync_run_dir(
        run_dir, study, plan.ray_storage,
        lambda tune_experiment: search_info(plan, tune_experiment, experiment),
        planned=plan.tracking, tracking_uri=tracking_uri,
        finished=manifest.get("status") == "finished", latest=manifest.get("experiment"),
        log=log)
