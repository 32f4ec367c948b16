"""What identifies a search in MLflow, and what its parent run records about it.

`SearchInfo` is small and picklable: the Tune callback carries it into Tune's experiment snapshot,
so a resumed search logs to the same parent run. It is built from the validated SearchPlan, the
same way by the live search and by `vlpuda sync`, so both find (or create) the same runs.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlpuda.tracking.content import (
    TAG_KIND,
    TAG_NOTE,
    TAG_RUN_DIR,
    TAG_RUN_NAME,
    TAG_SEARCH,
    TAG_STUDY,
    TAG_TASKS,
    flat_params,
)

if TYPE_CHECKING:
    from vlpuda.search.settings import SearchPlan

# Versions recorded on the parent run: what a result depends on.
PACKAGES = ("vlpuda", "torch", "open_clip_torch", "ray", "optuna", "mlflow")


@dataclass(frozen=True)
class SearchInfo:
    """One search run as MLflow sees it.

    Attributes:
        key: identifies the parent run: "<search name>/<tune experiment>".
        name: the search's name (the parent run's name).
        experiment: the MLflow experiment (default: the search's name).
        study: the Optuna study name; children of all its runs share one front.
        run_dir: the search's run directory, absolute.
        tasks: task keys as the loop names them (Art_to_Clipart), in the search's order.
        task_pairs: the same tasks as (source, target).
        epochs: the full length of a trial (shorter ones were stopped early).
        budget: the stored-parameter budget, if any.
        benchmark: the config's benchmark (for the paper's reference points).
        model: the open_clip model name.
        params: the parent run's params.
        tags: the parent run's tags.
        storage: the Optuna study's database URL (trial numbers are read from it).
        objectives: the study's two objectives, as result keys.
    """

    key: str
    name: str
    experiment: str
    study: str
    run_dir: str
    tasks: tuple[str, ...]
    task_pairs: tuple[tuple[str, str], ...]
    epochs: int
    budget: int | None
    benchmark: str
    model: str
    params: dict[str, str] = field(default_factory=dict, hash=False)
    tags: dict[str, str] = field(default_factory=dict, hash=False)
    storage: str = ""
    objectives: tuple[str, str] = ("target_acc", "stored_params")


def git_commit() -> str:
    """The commit of the vlpuda checkout, or "unknown" (an installed wheel has none)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else "unknown"


def package_versions() -> dict[str, str]:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


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
    from vlpuda.search.settings import METRICS
    from vlpuda.search.stopping_settings import describe_stopping

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
