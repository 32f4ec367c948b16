"""The `search:` section of a preset and its checks (plan.py builds the SearchPlan from them).

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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlpuda.config import TrainConfig, build_config
from vlpuda.errors import ConfigError, validation_problems
from vlpuda.search.objective import SearchTask, search_objective, task_entries
from vlpuda.search.stopping_settings import EarlyStopping
from vlpuda.spaces import SearchSpace, build_space

SEARCH_KEY = "search"
SAMPLERS = ("tpe", "nsga2", "random", "gp")
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


def min_grace_period(epochs: int) -> int:
    """A quarter of the budget, rounded up."""
    return max(1, math.ceil(epochs / 4))


def _format_settings_errors(err: ValidationError) -> list[str]:
    return validation_problems(
        err.errors(), SEARCH_KEY,
        unknown=lambda key: f"unknown key; valid: {', '.join(_valid_keys(key))}")


def _valid_keys(key: str) -> list[str]:
    model = EarlyStopping if key.startswith(f"{SEARCH_KEY}.early_stopping.") else SearchSettings
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


def task_configs(cfg: TrainConfig, settings: SearchSettings, problems: list[str]
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


def resource_problems(settings: SearchSettings, tasks: list[TrainConfig]) -> list[str]:
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


def early_stopping_problems(settings: SearchSettings, epochs: int) -> list[str]:
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


def space_and_defaults(cfg: TrainConfig, settings: SearchSettings, source: str | None,
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


def trial_config_problems(tasks: list[TrainConfig], space: SearchSpace,
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


