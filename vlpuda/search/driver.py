"""The search driver: Ray, shared assets, Tuner + OptunaSearch, resume, and the front at the end.

    plan (validated) -> ray.init / connect -> assets built once per task, ray.put as numpy
    -> Tuner(run_trial, ParetoOptunaSearch, ASHA?, budget Stopper?) -> fit -> front of the study

The study lives in persistent storage (SQLite in the run dir unless the preset names a database),
so it survives crashes and a later search under the same name extends it. `resume_search` restores
the Tune experiment (searcher state included) and leaves no study trial RUNNING.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlpuda.config import TrainConfig
from vlpuda.errors import ConfigError, VlpudaError
from vlpuda.search.front import Front, format_front, front_of, write_front
from vlpuda.search.settings import MANIFEST, SearchPlan, SearchSettings, build_plan
from vlpuda.search.study import (
    fail_running_trials,
    load_study,
    make_sampler,
    open_storage,
    read_manifest,
    write_manifest,
)

Log = Callable[[str], None]

LOCAL_DIR = "local-dir:"  # open_clip's prefix for a model folder
# Tune reserves one logical CPU per trial for the trial's driver process (it mostly waits).
TRIAL_DRIVER_CPUS = 1


def _log(message: str) -> None:
    print(message, flush=True)


# ---- Ray -------------------------------------------------------------------------------------


def trial_cpus(settings: SearchSettings) -> float:
    """Logical CPUs one trial reserves: its driver plus its Train workers."""
    return TRIAL_DRIVER_CPUS + settings.workers_per_trial * settings.cpus_per_worker


def local_cluster_cpus(settings: SearchSettings, cores: int, gpus: int) -> int:
    """Logical CPUs for a local Ray: enough for the intended concurrency.

    Logical CPUs may exceed the cores: each trial's driver mostly sleeps while its workers
    train, so only the workers' CPUs are counted against the cores.
    """
    worker_cpus = settings.workers_per_trial * settings.cpus_per_worker
    if settings.max_concurrent_trials:
        concurrency = settings.max_concurrent_trials
    elif settings.gpus_per_trial > 0:
        concurrency = int(gpus / settings.gpus_per_trial + 1e-9)
    else:
        concurrency = int(cores // worker_cpus)
    concurrency = max(1, min(concurrency, settings.num_samples))
    return max(cores, math.ceil(concurrency * trial_cpus(settings)))


def derive_concurrency(settings: SearchSettings, resources: dict[str, float]) -> int:
    """Trials that fit the cluster at once: by GPUs when trials use them, else by CPUs.

    Raises:
        VlpudaError: when not even one trial fits (and no max_concurrent_trials was given, as an
            autoscaling cluster would need).
    """
    if settings.max_concurrent_trials:
        return min(settings.max_concurrent_trials, settings.num_samples)
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    concurrency = int(cpus // trial_cpus(settings) + 1e-9)
    if settings.gpus_per_trial > 0:
        concurrency = min(concurrency, int(gpus / settings.gpus_per_trial + 1e-9))
    if concurrency < 1:
        raise VlpudaError(
            f"one trial needs {trial_cpus(settings):g} CPU"
            + (f" and {settings.gpus_per_trial:g} GPU" if settings.gpus_per_trial else "")
            + f" but the cluster has {cpus:g} CPU and {gpus:g} GPU; lower "
            "search.workers_per_trial / cpus_per_worker / gpus_per_trial, or set "
            "search.max_concurrent_trials if the cluster adds nodes on demand"
        )
    return min(concurrency, settings.num_samples)


@contextmanager
def ray_running(settings: SearchSettings, log: Log = _log) -> Iterator[None]:
    """Ray for the duration of a search; shut down afterwards only if this search started it."""
    started = connect_ray(settings, log)
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def connect_ray(settings: SearchSettings, log: Log = _log) -> bool:
    """Start a local Ray, or connect to the cluster at RAY_ADDRESS. Returns whether this call did
    it (and so should shut it down); an already initialised Ray is used as it is."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        log(f"connecting to the Ray cluster at {os.environ['RAY_ADDRESS']}")
        ray.init()
        return True
    # A local cluster needs no token auth; without this Ray writes ~/.ray/auth_token and warns.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Nothing preempts a local machine; the watcher is one more actor per trial on few cores.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    import torch

    cores = os.cpu_count() or 1
    cpus = local_cluster_cpus(settings, cores, torch.cuda.device_count())
    log(f"starting a local Ray with {cpus} logical CPUs on {cores} cores")
    ray.init(num_cpus=cpus)
    return True


# ---- shared assets ---------------------------------------------------------------------------


def build_assets(plan: SearchPlan, log: Log = _log) -> tuple[tuple[dict[str, Any], ...], list]:
    """Each task's assets, built once for the whole search (decoded images, text prototypes).
    Returns the resolved task configs (the demo's paths filled in) and the assets.

    Runs before Ray starts, so a first demo run's teacher pre-training has the machine to itself.
    """
    from vlpuda.trainables.assets import build_task_assets, resolve_demo

    tasks, built = [], []
    for cfg in plan.tasks:
        started = time.monotonic()
        resolved = resolve_demo(cfg)
        assets = build_task_assets(resolved)
        size = sum(a.nbytes for d in (assets.source, assets.target)
                   for a in (d.train_images, d.test_images, d.labels))
        log(f"shared assets for {cfg.src} -> {cfg.tgt}: {len(assets.source)} + "
            f"{len(assets.target)} images, {len(assets.classes)} classes, {size / 2**20:.1f} MiB "
            f"({time.monotonic() - started:.0f} s)")
        tasks.append(absolute_paths(resolved).model_dump())
        built.append(assets)
    return tuple(tasks), built


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with its file paths made absolute: Ray Train runs workers in a directory of its own
    (and, on a cluster, on other machines), where a relative path means something else."""
    def absolute(value: str | None) -> str | None:
        if value is None or "://" in value:
            return value
        path = Path(value).expanduser()
        return str(path.resolve()) if path.exists() else value

    update = {key: absolute(getattr(cfg, key))
              for key in ("data_dir", "cache_dir", "image_cache_dir", "pretrained")}
    if cfg.model.startswith(LOCAL_DIR):
        update["model"] = LOCAL_DIR + str(absolute(cfg.model.removeprefix(LOCAL_DIR)))
    return cfg.model_copy(update=update)


def share(assets: list) -> list:
    """Put each task's assets in the object store once; trials get references (numpy arrays are
    read zero-copy by every worker on a node)."""
    import ray

    return [ray.put(a) for a in assets]


def make_trainable(plan: SearchPlan, tasks: tuple[dict[str, Any], ...], refs: list):
    """The trial function with the search's shared setup bound; references, not data."""
    import ray.tune

    from vlpuda.trainables.trial import TrialSetup, run_trial

    s = plan.settings
    setup = TrialSetup(tasks=tasks, num_workers=s.workers_per_trial,
                       cpus_per_worker=s.cpus_per_worker, gpus_per_trial=s.gpus_per_trial,
                       storage_path=str(Path(plan.ray_storage) / "train")
                       if "://" not in plan.ray_storage else f"{plan.ray_storage}/train")
    return ray.tune.with_parameters(run_trial, setup=setup, assets=refs)


# ---- the study and the Tuner -----------------------------------------------------------------


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
        points_to_evaluate=first_points or None,
        sampler=make_sampler(s.sampler, s.seed, s.num_samples),
        study_name=plan.study_name,
        storage=open_storage(plan.storage),
    )


def make_tuner(plan: SearchPlan, trainable, searcher, concurrency: int, experiment: str):
    import ray.tune

    from vlpuda.search.progress import ProgressLines
    from vlpuda.search.stopping import StoredParamsBudget, make_scheduler

    s = plan.settings
    budget = s.stored_params_budget
    return ray.tune.Tuner(
        trainable,
        tune_config=ray.tune.TuneConfig(
            search_alg=searcher,  # metric/mode lists live in the searcher: TuneConfig takes one
            scheduler=make_scheduler(plan),
            num_samples=s.num_samples,
            max_concurrent_trials=concurrency,
        ),
        run_config=ray.tune.RunConfig(
            name=experiment,
            storage_path=plan.ray_storage,
            stop=StoredParamsBudget(budget) if budget else None,
            callbacks=[ProgressLines(tuple(d.name for d in plan.space.searched), plan.epochs,
                                     s.num_samples, budget)],
            failure_config=ray.tune.FailureConfig(max_failures=s.max_failures),
            verbose=0,  # ProgressLines prints one line per event instead of Tune's tables
        ),
    )


# ---- the run directory -----------------------------------------------------------------------


def _manifest(plan: SearchPlan, experiment: str, status: str) -> dict[str, Any]:
    return {
        "name": plan.name,
        "study_name": plan.study_name,
        "storage": plan.storage,
        "ray_storage": plan.ray_storage,
        "experiment": experiment,
        "source": plan.source,
        "num_samples": plan.settings.num_samples,
        "epochs": plan.epochs,
        "fingerprint": plan.fingerprint(),
        "settings": plan.settings.model_dump(),
        "raw": plan.raw,
        "status": status,
        "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def abandon(plan: SearchPlan, manifest: dict[str, Any]) -> None:
    """Give up an unresumable run: its RUNNING trials FAIL, and a new search may start here."""
    study = load_study(manifest)
    fail_running_trials(study, manifest["experiment"])
    write_manifest(plan.run_dir, {**manifest, "status": "abandoned",
                                  "updated": time.strftime("%Y-%m-%d %H:%M:%S")})


def check_extension(plan: SearchPlan) -> dict[str, Any] | None:
    """The previous manifest of this run dir, if any. Refuses to start over an unfinished search
    (it should be resumed) or one whose trials would not be comparable with this one's (another
    space, tasks or budget)."""
    if not (plan.run_dir / MANIFEST).is_file():
        return None
    previous = read_manifest(plan.run_dir)
    if previous.get("status") == "running":
        raise ConfigError([
            f"search.name: {plan.run_dir} holds search {previous.get('name')!r} that did not "
            f"finish (interrupted, or still running): continue it with `vlpuda search --resume "
            f"{plan.run_dir}`, or pass --name NEW"
        ], plan.source)
    old, new = previous.get("fingerprint", {}), plan.fingerprint()
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differ:
        raise ConfigError([
            f"search.name: {plan.run_dir} already holds search {previous.get('name')!r} whose "
            f"{', '.join(differ)} differ from this one's, so their trials cannot share a front; "
            "pass --name NEW (or remove the directory)"
        ], plan.source)
    return previous


# ---- running, resuming, finishing ------------------------------------------------------------


def run_search(plan: SearchPlan, log: Log = _log) -> Front:
    """Run a new search (or extend the study of an earlier one under the same name)."""
    previous = check_extension(plan)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    tasks, assets = build_assets(plan, log)
    with ray_running(plan.settings, log):
        import ray

        concurrency = derive_concurrency(plan.settings, ray.cluster_resources())
        refs = share(assets)
        trials_before = existing_trials(plan)
        if trials_before:
            log(f"extending study {plan.study_name!r} ({trials_before} trials so far)"
                + (f", last run {previous.get('experiment')}" if previous else ""))
        # The first trial of a new study trains the preset's (paper) defaults. They go in as
        # points_to_evaluate: OptunaSearch's evaluated_rewards is broken for two objectives.
        first = [] if trials_before else [plan.defaults_point]
        experiment = f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
        searcher = make_searcher(plan, experiment, first)
        write_manifest(plan.run_dir, _manifest(plan, experiment, "running"))
        log(f"running {plan.settings.num_samples} trials, up to {concurrency} at a time; "
            f"resume after an interruption with: vlpuda search --resume {plan.run_dir}")
        tuner = make_tuner(plan, make_trainable(plan, tasks, refs), searcher, concurrency,
                           experiment)
        results = tuner.fit()
        return finish(plan, experiment, results, log)


def resume_search(run_dir: str | Path, log: Log = _log) -> Front:
    """Continue a crashed or interrupted search from its run directory."""
    import ray.tune

    run_dir = Path(run_dir).expanduser().resolve()
    manifest = read_manifest(run_dir)
    # Where things live comes from the manifest (absolute), not from a cwd-relative preset.
    section = manifest["raw"].get("search") or {}
    where = {"run_dir": str(run_dir)}
    where.update({key: manifest[stored] for key, stored in
                  (("storage", "storage"), ("storage_path", "ray_storage")) if section.get(key)})
    plan = build_plan(manifest["raw"], search_overrides=where, source=manifest.get("source"))
    experiment = manifest["experiment"]
    path = _experiment_path(plan, experiment)
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
        write_manifest(run_dir, {**manifest, "status": "running",
                                 "updated": time.strftime("%Y-%m-%d %H:%M:%S")})
        # Unfinished and errored trials continue (each from its last Train checkpoint); the
        # searcher's state comes back from the experiment's snapshot.
        tuner = ray.tune.Tuner.restore(path, trainable=make_trainable(plan, tasks, refs),
                                       resume_unfinished=True, resume_errored=True)
        results = tuner.fit()
        return finish(plan, experiment, results, log)


def _experiment_path(plan: SearchPlan, experiment: str) -> str:
    if "://" in plan.ray_storage:
        return f"{plan.ray_storage}/{experiment}"
    return str(Path(plan.ray_storage) / experiment)


def finish(plan: SearchPlan, experiment: str, results, log: Log = _log) -> Front:
    """Account for every trial, close leftovers, print the front and write it to the run dir."""
    study = load_study({"study_name": plan.study_name, "storage": plan.storage})
    # Tune has finished every trial: one of ours still RUNNING in the study is an orphan.
    leftovers = fail_running_trials(study, experiment)
    statuses: dict[str, int] = {}
    for result in results:
        status = "errored" if result.error else "finished"
        statuses[status] = statuses.get(status, 0) + 1
    ran = sum(statuses.values())
    log(f"{ran} of {plan.settings.num_samples} planned trials ran ("
        + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) + ")"
        + (f"; {len(leftovers)} orphaned study trial(s) marked FAIL" if leftovers else ""))
    if ran < plan.settings.num_samples:
        log(f"warning: {plan.settings.num_samples - ran} planned trials did not run; "
            f"run `vlpuda search --resume {plan.run_dir}` again")
    front = front_of(study)
    log(format_front(front))
    paths = write_front(front, plan.run_dir)
    log(f"front written to {', '.join(str(p) for p in paths)}; "
        f"print it again with: vlpuda pareto {plan.run_dir}")
    manifest = read_manifest(plan.run_dir)
    write_manifest(plan.run_dir, {**manifest, "status": "finished",
                                  "updated": time.strftime("%Y-%m-%d %H:%M:%S")})
    return front

