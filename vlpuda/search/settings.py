"""The `search:` section of a preset, validated into the plan one search runs.

Everything a user can get wrong is checked here, before Ray starts: unknown keys, the space and its
overrides (bounds, unknown parameters, illegal values), the paper defaults lying inside the space,
the transfer tasks, the early-stopping grace period and the per-trial resources. Every problem is
collected and one ConfigError lists them all, each naming its key (`search.num_samples`, ...).

    search:
      space: cmkd_rst                 # a name from vlpuda.spaces.SPACES
      space_overrides: {lr: {low: 1e-4, high: 1e-2}}
      sampler: tpe                    # tpe | nsga2 | random | gp
      num_samples: 16
      workers_per_trial: 1            # Ray Train workers (DDP) per trial
      gpus_per_trial: 0.5             # shared by a trial's workers; fractions share a GPU
      worker_resources: {"accelerator_type:A10G": 0.01}   # custom resources per worker
      driver_resources: null          # 1 CPU; 0.25 CPU + 0.01 TRAIN_DRIVER where the cluster has it
      early_stopping: {method: moasha, grace_period: 5}   # moasha | asha | none
      sparsity_ladder: 3              # per complete trial: its delta cut to 1/2, 1/4, 1/8
      stored_params_budget: 2.0e+6    # stop (and prune) trials that store more
      tasks: [[Art, Clipart], {src: Art, tgt: MyPhotos, unlabeled_target: true}]
      objective: proxy_snd            # the first objective; default target_acc (labelled
                                      # targets) or the default label-free validator
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlpuda.config import TrainConfig, build_config, path_problems
from vlpuda.errors import ConfigError
from vlpuda.objectives import ORACLE, objective_metrics
from vlpuda.search.objective import (
    SearchTask,
    objective_problems,
    search_objective,
    task_entries,
)
from vlpuda.search.stopping_settings import EarlyStopping, describe_stopping
from vlpuda.spaces import SearchSpace, build_space

SEARCH_KEY = "search"
# The two objectives: names are the metrics contract, modes are Ray's spelling.
METRICS = ("target_acc", "stored_params")
MODES = ("max", "min")
SAMPLERS = ("tpe", "nsga2", "random", "gp")
MANIFEST = "search.json"
# Settings that do not change what a trial computes (or that a task sets): a search may change
# them and still extend an earlier study.
NOT_IN_FINGERPRINT = {"src", "tgt", "data_dir", "cache_dir", "image_cache_dir", "out_dir",
                      "device", "eval_batch_size"}
DEFAULT_SPACE = "cmkd_rst"


class SearchSettings(BaseModel):
    """The `search:` section as written by the user (after CLI overrides)."""

    model_config = ConfigDict(extra="forbid")

    space: str = DEFAULT_SPACE
    space_overrides: dict[str, Any] = Field(default_factory=dict)
    sampler: Literal["tpe", "nsga2", "random", "gp"] = "tpe"
    num_samples: int = Field(16, gt=0)
    seed: int = 0
    workers_per_trial: int = Field(1, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    cpus_per_worker: float = Field(1.0, gt=0)
    # Custom Ray resources each Train worker reserves besides CPU/GPU: on a mixed cluster,
    # {"accelerator_type:A10G": 0.01} picks a GPU type (Ray gives each GPU node that resource).
    worker_resources: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    # What each trial's driver (the Tune trial running the TorchTrainer) reserves. None: 1 CPU,
    # or a quarter CPU and a sliver of TRAIN_DRIVER when the cluster has it (cluster.yaml's
    # on-demand cpu_driver nodes), so that losing a spot GPU node never takes a driver with it.
    driver_resources: dict[str, Annotated[float, Field(ge=0)]] | None = None
    max_concurrent_trials: int | None = Field(None, gt=0)
    max_failures: int = Field(1, ge=0)  # retries per trial; a retry resumes from its checkpoint
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    # Nested truncations of each complete trial's delta (1/2 .. 1/2^n of its changed weights),
    # scored as extra front points; 0 switches them off.
    sparsity_ladder: int = Field(3, ge=0, le=16)
    stored_params_budget: int | None = Field(None, gt=0)
    tasks: list[tuple[str, str] | SearchTask] | None = None
    # The first objective (a result of vlpuda.objectives.SELECTIONS); None: target_acc, or the
    # default label-free validator when a target is unlabeled. Each trial selects its epoch by it.
    objective: str | None = None
    storage: str | None = None  # Optuna storage URL; default sqlite:///<run_dir>/optuna.db
    name: str | None = None  # default: the preset's file name
    run_dir: str | None = None  # default: runs/<name>
    storage_path: str | None = None  # Ray results; default: <run_dir>/ray


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


def min_grace_period(epochs: int) -> int:
    """A quarter of the budget, rounded up."""
    return max(1, math.ceil(epochs / 4))


def _format_settings_errors(err: ValidationError) -> list[str]:
    problems = []
    for item in err.errors():
        key = ".".join([SEARCH_KEY, *(str(part) for part in item["loc"])])
        if item["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key; valid: {', '.join(_valid_keys(item['loc']))}")
        else:
            problems.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return problems


def _valid_keys(loc: tuple) -> list[str]:
    model = EarlyStopping if loc and loc[0] == "early_stopping" else SearchSettings
    return list(model.model_fields)


def parse_settings(section: Any) -> tuple[SearchSettings | None, list[str]]:
    """The section as SearchSettings, or None and the problems."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        return None, [f"{SEARCH_KEY}: expected a mapping of key: value, got {section!r}"]
    try:
        return SearchSettings.model_validate(section), []
    except ValidationError as err:
        return None, _format_settings_errors(err)


def _task_configs(cfg: TrainConfig, settings: SearchSettings, problems: list[str]
                  ) -> list[tuple[str, TrainConfig]]:
    """Each task's training config, with the prefix its problems are reported under. Each
    selects its kept epoch by the search's objective."""
    objective = {"selection": search_objective(cfg, settings)}
    if not settings.tasks:
        if cfg.src is None or cfg.tgt is None:
            problems.append("src/tgt: a search needs a transfer task: set src and tgt "
                            "(--src Art --tgt Clipart) or list search.tasks")
            return []
        return [("", cfg.model_copy(update=objective))]
    configs, seen = [], set()
    for i, entry in enumerate(task_entries(settings)):
        src, tgt = entry["src"], entry["tgt"]
        label = f"{SEARCH_KEY}.tasks[{i}] ([{src}, {tgt}]): "
        if (src, tgt) in seen:
            problems.append(f"{label}listed twice")
            continue
        seen.add((src, tgt))
        try:
            task, _ = build_config({**cfg.model_dump(), **entry, **objective})
        except ConfigError as err:
            problems.extend(label + p for p in err.problems)
            continue
        configs.append((label, task))
    return configs


def _resource_problems(settings: SearchSettings, tasks: list[TrainConfig]) -> list[str]:
    problems = []
    gpus, workers = settings.gpus_per_trial, settings.workers_per_trial
    problems += [f"{SEARCH_KEY}.worker_resources.{name}: set search.cpus_per_worker / "
                 "gpus_per_trial instead" for name in settings.worker_resources
                 if name in ("CPU", "GPU")]
    driver = settings.driver_resources
    if driver is not None and not any(amount > 0 for amount in driver.values()):
        problems.append(f"{SEARCH_KEY}.driver_resources: a trial's driver must reserve "
                        "something, e.g. {CPU: 1} (Ray cannot place an empty request)")
    per_worker = gpus / workers
    if per_worker > 1 and not per_worker.is_integer():
        problems.append(
            f"{SEARCH_KEY}.gpus_per_trial: {gpus:g} GPUs over {workers} workers gives "
            f"{per_worker:g} per worker; give each worker a fraction of one GPU or whole GPUs"
        )
    devices = {t.device for t in tasks}
    if gpus == 0 and "cuda" in devices:
        problems.append(f"device: 'cuda' but {SEARCH_KEY}.gpus_per_trial is 0, so trials get "
                        "no GPU; set search.gpus_per_trial (e.g. 1 or 0.5) or device=auto")
    if gpus > 0 and "cpu" in devices:
        problems.append(f"{SEARCH_KEY}.gpus_per_trial: trials reserve {gpus:g} GPU but device is "
                        "'cpu'; set device=auto (or cuda) or gpus_per_trial: 0")
    return problems


def _early_stopping_problems(settings: SearchSettings, epochs: int) -> list[str]:
    stopping = settings.early_stopping
    if stopping.asha and stopping.method not in (None, "asha"):
        return [f"{SEARCH_KEY}.early_stopping: asha: true means method: asha, but method is "
                f"{stopping.method!r}; drop asha (or set method: asha)"]
    if stopping.effective_method == "none" or stopping.grace_period is None:
        return []
    key, least = f"{SEARCH_KEY}.early_stopping.grace_period", min_grace_period(epochs)
    if stopping.grace_period < least:
        return [f"{key}: {stopping.grace_period} epochs is less than a quarter of the budget "
                f"(epochs={epochs}); early accuracy under the ramp and the sparsity reset says "
                f"little about the final one: use at least {least}"]
    if stopping.grace_period > epochs:
        return [f"{key}: {stopping.grace_period} exceeds epochs={epochs}; nothing could be "
                "stopped early (set early_stopping.method: none instead)"]
    return []


def _space_and_defaults(cfg: TrainConfig, settings: SearchSettings, source: str | None,
                        problems: list[str]) -> tuple[SearchSpace | None, dict[str, Any]]:
    try:
        space = build_space(settings.space, settings.space_overrides, source)
    except ConfigError as err:
        problems.extend(err.problems)
        return None, {}
    try:
        point = space.defaults_point(cfg.model_dump(), source)
    except ConfigError as err:
        problems.extend(err.problems)
        return space, {}
    return space, point


def _trial_config_problems(tasks: list[TrainConfig], space: SearchSpace,
                           point: dict[str, Any]) -> list[str]:
    """The first trial's config, built by the space exactly as a trial gets it (constants and
    the derived rst_threshold included), must be a valid training config for every task."""
    import optuna

    from vlpuda.trainables.params import apply_params

    # Dimensions without a default take their lower bound (or first choice) for this check.
    params = {**space.lowest_point(), **point}
    config = space(optuna.trial.FixedTrial(params))
    problems = []
    for task in tasks:
        try:
            apply_params(task, config)
        except ValidationError as err:
            problems.extend(f"{SEARCH_KEY}.space ({space.name}): its trials would get an invalid "
                            f"config: {'.'.join(map(str, e['loc']))}: {e['msg']}"
                            for e in err.errors())
    return list(dict.fromkeys(problems))


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _locations(settings: SearchSettings, source: str | None, problems: list[str]
               ) -> tuple[str, Path, str, str]:
    name = settings.name or (Path(source).stem if source else "search")
    if not _NAME.match(name):
        problems.append(f"{SEARCH_KEY}.name: {name!r} must be letters, digits, '_', '.' or '-'")
    run_dir = Path(settings.run_dir or Path("runs") / name).expanduser().resolve()
    storage = settings.storage or f"sqlite:///{run_dir / 'optuna.db'}"
    if "://" not in storage:
        problems.append(f"{SEARCH_KEY}.storage: {storage!r} is not a database URL "
                        "(e.g. sqlite:////abs/path/optuna.db or postgresql://user@host/db)")
    if settings.storage_path and "://" in settings.storage_path:
        ray_storage = settings.storage_path  # s3://, gs://: shared storage for a cluster
    else:
        # Ray needs an absolute path: a relative one is resolved against each process's cwd.
        ray_storage = str(Path(settings.storage_path or run_dir / "ray").expanduser().resolve())
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
    labelled = [] if problems else _task_configs(cfg, settings, problems)
    tasks = [task for _, task in labelled]
    space, point = _space_and_defaults(cfg, settings, source, problems)
    if tasks:
        problems += _early_stopping_problems(settings, tasks[0].epochs)
        problems += _resource_problems(settings, tasks)
        if space is not None and not problems:
            problems += _trial_config_problems(tasks, space, point)
        if check_paths:
            for label, task in labelled:
                problems += [label + p for p in path_problems(task)]
    name, run_dir, storage, ray_storage = _locations(settings, source, problems)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source)
    assert space is not None
    merged = {**raw, **(train_overrides or {})}
    merged[SEARCH_KEY] = section
    return SearchPlan(settings, tuple(tasks), space, point, name, run_dir, storage, name,
                      ray_storage, source, merged, objective)


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

