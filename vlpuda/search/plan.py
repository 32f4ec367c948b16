"""A validated search: the `SearchPlan` one search runs, built from a preset (or a run dir's
manifest), and the lines that describe it.

Every problem of the preset is collected (search/settings.py checks the `search:` section) and
one ConfigError lists them all, before Ray starts. Where things live is resolved here once,
absolute: the run dir, the study storage, Ray's storage and the MLflow destination.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlpuda.config import TrainConfig, build_config, path_problems
from vlpuda.errors import ConfigError
from vlpuda.layout import OPTUNA_DB, RAY_DIR
from vlpuda.objectives import ORACLE, objective_metrics
from vlpuda.search.objective import objective_problems, search_objective
from vlpuda.search.settings import (
    SEARCH_KEY,
    SearchSettings,
    early_stopping_problems,
    min_grace_period,
    parse_settings,
    resource_problems,
    space_and_defaults,
    task_configs,
    trial_config_problems,
)
from vlpuda.search.stopping_settings import describe_stopping
from vlpuda.spaces import SearchSpace
from vlpuda.tracking.where import TrackingPlan, plan_tracking

# Settings that do not change what a trial computes (or that a task sets): a search may change
# them and still extend an earlier study.
NOT_IN_FINGERPRINT = {"src", "tgt", "data_dir", "cache_dir", "image_cache_dir", "out_dir",
                      "device", "eval_batch_size"}


@dataclass(frozen=True)
class SearchPlan:
    """A validated search: what each trial trains, the space, and where everything is stored."""

    settings: SearchSettings
    tasks: tuple[TrainConfig, ...]  # one config per transfer task, src/tgt set
    space: SearchSpace
    defaults_point: dict[str, Any]  # the preset's values of the searched dimensions
    name: str
    run_dir: Path
    storage: str  # Optuna storage URL
    study_name: str
    ray_storage: str  # absolute path (or URI) for Tune and Train results
    source: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)  # the preset + overrides, for --resume
    objective: str = ORACLE  # the first objective's metric name (proxy_snd, target_acc, ...)
    # Where (and whether) it logs to MLflow, resolved once; off for a plan built by hand.
    tracking: TrackingPlan = TrackingPlan(False, None, None)

    @property
    def objectives(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """The result keys and modes of the two objectives: the one place the searcher, the
        front, ASHA (and any scheduler) and MLflow take them from."""
        return objective_metrics(self.objective)

    @property
    def epochs(self) -> int:
        return self.tasks[0].epochs

    @property
    def grace_period(self) -> int:
        return self.settings.early_stopping.grace_period or min_grace_period(self.epochs)

    def ray_path(self, name: str) -> str:
        """`name` under ray_storage, an absolute path or a URI alike."""
        return f"{self.ray_storage}/{name}"

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a later search to extend this one's study: the tasks and every
        training setting that trials do not set themselves. Trials differing only in searched
        values (another space, other bounds) share a front; trials with other epochs, tasks or
        model do not."""
        # The RST fields are the variant's business: a dense space leaves them unused.
        trial_set = {*self.space.names, *self.space.constants, "rst_threshold", "rst_mode",
                     "rst_ratio"}
        fixed = {key: value for key, value in self.tasks[0].model_dump().items()
                 if key not in trial_set and key not in NOT_IN_FINGERPRINT}
        return {"tasks": [[t.src, t.tgt] for t in self.tasks], **fixed}


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Training overrides and `search.<key>` overrides (`search.early_stopping.asha=true`)."""
    train: dict[str, Any] = {}
    search: dict[str, Any] = {}
    for key, value in overrides.items():
        if not key.startswith(f"{SEARCH_KEY}."):
            train[key] = value
            continue
        *parents, leaf = key.split(".")[1:]
        target = search
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return train, search


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _locations(settings: SearchSettings, source: str | None, problems: list[str]
               ) -> tuple[str, Path, str, str]:
    name = settings.name or (Path(source).stem if source else "search")
    if not _NAME.match(name):
        problems.append(f"{SEARCH_KEY}.name: {name!r} must be letters, digits, '_', '.' or '-'")
    run_dir = Path(settings.run_dir or Path("runs") / name).expanduser().resolve()
    storage = settings.storage or f"sqlite:///{run_dir / OPTUNA_DB}"
    if "://" not in storage:
        problems.append(f"{SEARCH_KEY}.storage: {storage!r} is not a database URL "
                        "(e.g. sqlite:////abs/path/optuna.db or postgresql://user@host/db)")
    if settings.storage_path and "://" in settings.storage_path:
        ray_storage = settings.storage_path  # s3://, gs://: shared storage for a cluster
    else:
        # Ray needs an absolute path: a relative one is resolved against each process's cwd.
        ray_storage = str(Path(settings.storage_path or run_dir / RAY_DIR).expanduser().resolve())
    return name, run_dir, storage, ray_storage


def plan_from_manifest(run_dir: Path, manifest: dict[str, Any], *, check_paths: bool = True
                       ) -> SearchPlan:
    """The plan of the search a run dir's manifest records, as that search had it: where things
    live comes from the manifest (absolute paths), not from the preset's paths read relative to
    today's working directory."""
    section = manifest["raw"].get(SEARCH_KEY) or {}
    where = {"run_dir": str(run_dir)}
    where.update({key: manifest[stored] for key, stored in
                  (("storage", "storage"), ("storage_path", "ray_storage")) if section.get(key)})
    return build_plan(manifest["raw"], search_overrides=where, source=manifest.get("source"),
                      check_paths=check_paths)


def build_plan(
    raw: dict[str, Any],
    train_overrides: dict[str, Any] | None = None,
    search_overrides: dict[str, Any] | None = None,
    source: str | None = None,
    *,
    check_paths: bool = True,
) -> SearchPlan:
    """Validate a preset (plus overrides) into a SearchPlan.

    Raises:
        ConfigError: for a bad training config, or listing every problem of the search section
            (and, with `check_paths`, missing data folders).
    """
    cfg, sections = build_config(raw, train_overrides, source)
    section = sections.get(SEARCH_KEY) or {}
    if isinstance(section, dict):
        section = _merge(section, search_overrides or {})
    settings, problems = parse_settings(section)
    if settings is None:
        raise ConfigError(problems, source)
    objective = search_objective(cfg, settings)
    # Checked before the tasks are built, so the message names search.objective.
    problems += objective_problems(cfg, settings, objective)
    labelled = [] if problems else task_configs(cfg, settings, problems)
    tasks = [task for _, task in labelled]
    space, point = space_and_defaults(cfg, settings, source, problems)
    if tasks:
        problems += early_stopping_problems(settings, tasks[0].epochs)
        problems += resource_problems(settings, tasks)
        if space is not None and not problems:
            problems += trial_config_problems(tasks, space, point)
        if check_paths:
            for label, task in labelled:
                problems += [label + p for p in path_problems(task)]
    name, run_dir, storage, ray_storage = _locations(settings, source, problems)
    tracking = plan_tracking(raw, run_dir, source)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source)
    assert space is not None
    merged = {**raw, **(train_overrides or {})}
    merged[SEARCH_KEY] = section
    return SearchPlan(settings, tuple(tasks), space, point, name, run_dir, storage, name,
                      ray_storage, source, merged, objective, tracking)


def describe_plan(plan: SearchPlan) -> list[str]:
    """A few lines saying what the search will do, for the CLI."""
    s = plan.settings
    tasks = ", ".join(f"{t.src} -> {t.tgt}" for t in plan.tasks)
    stopping = describe_stopping(s.early_stopping, plan.grace_period, plan.epochs,
                                 plan.objectives[0])
    if s.stored_params_budget:
        stopping += f"; stop above {s.stored_params_budget:,} stored parameters"
    return [
        f"search {plan.name}: {s.num_samples} trials, sampler {s.sampler}, "
        f"space {plan.space.name}",
        f"  tasks: {tasks}; {plan.epochs} epochs x {plan.tasks[0].iters_per_epoch} iterations",
        f"  objectives: {plan.objective} (max; each trial keeps the epoch it scores best), "
        "stored_params (min)",
        f"  per trial: {s.workers_per_trial} worker(s) x {s.cpus_per_worker:g} CPU"
        + (f", {s.gpus_per_trial:g} GPU" if s.gpus_per_trial else "")
        + "".join(f", {n:g} {name} per worker" for name, n in s.worker_resources.items()),
        f"  early stopping: {stopping}",
        "  sparsity ladder: " + (f"each complete trial's delta also scored at 1/2 .. "
                                 f"1/{2 ** s.sparsity_ladder} of its changed weights"
                                 if s.sparsity_ladder else "off"),
        f"  run dir: {plan.run_dir}",
        f"  study: {plan.study_name} in {plan.storage}",
        *[f"    {line}" for line in plan.space.describe()],
    ]

