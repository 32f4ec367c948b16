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
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlpuda.config import TrainConfig
from vlpuda.errors import ConfigError, VlpudaError
from vlpuda.front.table import format_front, write_front
from vlpuda.front.trials import Front, front_of
from vlpuda.layout import MANIFEST, SEARCH_KEYS, read_manifest, write_manifest
from vlpuda.search.plan import SearchPlan, plan_from_manifest
from vlpuda.search.settings import SearchSettings
from vlpuda.search.study import (
    experiment_counts,
    fail_running_trials,
    load_study,
    make_sampler,
    new_experiment_name,
    open_storage,
    tune_trial_numbers,
)

if TYPE_CHECKING:
    from vlpuda.tracking.live import SearchTracker

Log = Callable[[str], None]

LOCAL_DIR = "local-dir:"  # open_clip's prefix for a model folder
# Tune reserves one logical CPU per trial for the trial's driver process (it mostly waits).
TRIAL_DRIVER_CPUS = 1
# The custom resource of cluster.yaml's on-demand `cpu_driver` nodes. A trial's driver that
# reserves a sliver of it runs there, never on a spot GPU node: losing a GPU node then costs
# the trial its workers only, which it restarts from their last checkpoint.
TRAIN_DRIVER = "TRAIN_DRIVER"
TRAIN_DRIVER_SHARE = 0.01
# A pinned driver mostly waits on its workers: a quarter CPU lets cluster.yaml's 8-CPU driver
# node hold 32 of them, more than its GPU nodes can run trials.
PINNED_DRIVER_CPUS = 0.25


def _log(message: str) -> None:
    print(message, flush=True)


# ---- Ray -------------------------------------------------------------------------------------


def local_cluster_cpus(settings: SearchSettings, cores: int, gpus: int) -> int:
    """Logical CPUs for a local Ray: enough for the intended concurrency.

    Logical CPUs may exceed the cores: each trial's driver mostly sleeps while its workers
    train, so only the workers' CPUs are counted against the cores.
    """
    worker_cpus = settings.workers_per_trial * settings.cpus_per_worker
    if settings.max_concurrent_trials:
        concurrency = settings.max_concurrent_trials
    elif settings.gpus_per_trial > 0:
        concurrency = fits(gpus, settings.gpus_per_trial)
    else:
        concurrency = int(cores // worker_cpus)
    concurrency = max(1, min(concurrency, settings.num_samples))
    # A local machine offers no TRAIN_DRIVER: the driver's own share (1 CPU unless set).
    return max(cores, math.ceil(concurrency * trial_resources(settings, {})["CPU"]))


def fits(available: float, amount: float) -> int:
    """How many times `amount` fits in `available` (fractions such as 0.1 x 10 count as 10)."""
    return int(available / amount + 1e-9)


def driver_resources(settings: SearchSettings, cluster: dict[str, float]) -> dict[str, float]:
    """What each trial's driver reserves: search.driver_resources, else 1 CPU and, where the
    cluster offers TRAIN_DRIVER, a sliver of it."""
    if settings.driver_resources is not None:
        return dict(settings.driver_resources)
    if cluster.get(TRAIN_DRIVER, 0) > 0:
        return {"CPU": PINNED_DRIVER_CPUS, TRAIN_DRIVER: TRAIN_DRIVER_SHARE}
    return {"CPU": TRIAL_DRIVER_CPUS}


def worker_demand(settings: SearchSettings) -> dict[str, float]:
    """What one Train worker reserves (its bundle in the trial's placement group)."""
    per_worker = {"CPU": settings.cpus_per_worker,
                  "GPU": settings.gpus_per_trial / settings.workers_per_trial,
                  **settings.worker_resources}
    return {name: amount for name, amount in per_worker.items() if amount > 0}


def trial_resources(settings: SearchSettings, cluster: dict[str, float]) -> dict[str, float]:
    """Everything one trial holds while it trains: its driver plus all its Train workers."""
    demand = driver_resources(settings, cluster)
    for name, amount in worker_demand(settings).items():
        demand[name] = demand.get(name, 0.0) + settings.workers_per_trial * amount
    return {name: amount for name, amount in demand.items() if amount > 0}


def describe(resources: dict[str, float], sep: str = ", ") -> str:
    return sep.join(f"{amount:g} {name}" for name, amount in resources.items())


def worker_slots(settings: SearchSettings, nodes: list[dict[str, float]]) -> int:
    """Train workers the nodes can hold at once, node by node: a worker's bundle never spans
    nodes, so two half-free GPUs on two nodes are not one GPU, and a resource only some node
    types have (accelerator_type:H100) counts only where it is."""
    need = worker_demand(settings)
    return sum(min(fits(node.get(name, 0.0), amount) for name, amount in need.items())
               for node in nodes)


def derive_concurrency(settings: SearchSettings, resources: dict[str, float],
                       nodes: list[dict[str, float]] | None = None) -> int:
    """Trials that fit the cluster at once: the scarcest resource a trial needs (GPUs or a
    custom accelerator resource when trials use them, else CPUs) decides, over the cluster's
    totals and, given the nodes' resources, node by node for the workers.

    Raises:
        VlpudaError: when not even one trial fits (and no max_concurrent_trials was given, as an
            autoscaling cluster would need).
    """
    if settings.max_concurrent_trials:
        return min(settings.max_concurrent_trials, settings.num_samples)
    demand = trial_resources(settings, resources)
    concurrency = min(fits(resources.get(name, 0.0), amount) for name, amount in demand.items())
    if nodes is not None:
        concurrency = min(concurrency, worker_slots(settings, nodes) // settings.workers_per_trial)
    if concurrency < 1:
        needs = describe(demand, " and ")
        has = describe({name: resources.get(name, 0.0) for name in demand}, " and ")
        raise VlpudaError(
            f"one trial needs {needs} but the cluster has {has}; lower "
            "search.workers_per_trial / cpus_per_worker / gpus_per_trial / worker_resources, "
            "or set search.max_concurrent_trials if the cluster adds nodes on demand"
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


def running_cluster_address(timeout: float = 1.0) -> str | None:
    """The address of a Ray started with `ray start` on this machine (a cluster's head node, as
    `ray exec` and `ray attach` reach it), or None. Ray records it in its temp dir; a record left
    by a Ray that has since died is ignored (Ray itself would wait on it for minutes)."""
    # Ray's own lookup of the record (RAY_TMPDIR, TMPDIR, /tmp); a private helper, stable in the
    # Ray release pyproject pins.
    from ray._common.utils import get_ray_address_file

    try:
        address = Path(get_ray_address_file(None)).read_text().strip()
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=timeout):
            return address
    except (OSError, ValueError):
        return None


def exported_address(address: str) -> str | None:
    """The address every process of the search should see as RAY_ADDRESS: host:port as other
    nodes reach it (`auto` and `localhost:6379` resolved), or None for a Ray Client address."""
    if "://" in address:
        return None
    from ray._private.services import canonicalize_bootstrap_address_or_die

    return canonicalize_bootstrap_address_or_die(address)


def connect_ray(settings: SearchSettings, log: Log = _log) -> bool:
    """Connect to the cluster at RAY_ADDRESS or to the Ray already running on this machine, else
    start a local Ray sized for the search. Returns whether this call did it (and so should shut
    it down); an already initialised Ray is used as it is."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if not address and (address := running_cluster_address()):
        log(f"found the Ray started on this machine at {address}; set RAY_ADDRESS to use "
            "another cluster")
    if address:
        log(f"connecting to the Ray cluster at {address}")
        # Ray Train's placement-group cleaner finds the State API through RAY_ADDRESS, else by
        # looking for a Ray on its own host; on a host running two Rays it gives up, and each
        # trial stopped early keeps its workers' CPUs and GPUs until the search ends. Every
        # process of this search (trials, Train controllers, cleaners) inherits the address.
        exported = exported_address(address)
        ray.init(address=address,
                 runtime_env={"env_vars": {"RAY_ADDRESS": exported}} if exported else None)
        return True
    # A local cluster needs no token auth; without this Ray writes ~/.ray/auth_token and warns.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Nothing preempts a local machine; the watcher is one more actor per trial on few cores.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    import torch

    cores = os.cpu_count() or 1
    cpus = local_cluster_cpus(settings, cores, torch.cuda.device_count())
    log(f"starting a local Ray with {cpus} logical CPUs on {cores} cores")
    # "local": a new Ray even where a dead one left its address behind.
    ray.init(address="local", num_cpus=cpus)
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
                       worker_resources=s.worker_resources, storage_path=plan.ray_path("train"),
                       sparsity_ladder=s.sparsity_ladder)
    trainable = ray.tune.with_parameters(run_trial, setup=setup, assets=refs)
    # Where the trial's driver runs (its Train workers get their own placement group).
    return ray.tune.with_resources(trainable, driver_resources(s, ray.cluster_resources()))


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
        metrics=plan.objectives[0],
        points_to_evaluate=first_points or None,
        sampler=make_sampler(s.sampler, s.seed, s.num_samples),
        study_name=plan.study_name,
        storage=open_storage(plan.storage),
    )


def make_tuner(plan: SearchPlan, trainable, searcher, concurrency: int, experiment: str,
               callbacks: tuple = ()):
    import ray.tune

    from vlpuda.naming import TrialNumbers
    from vlpuda.search.moasha import MOASHAScheduler, SchedulerState
    from vlpuda.search.progress import ProgressLines
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


# ---- the run directory -----------------------------------------------------------------------


def with_status(manifest: dict[str, Any], status: str) -> dict[str, Any]:
    """The manifest with a new status, stamped with the time."""
    return {**manifest, "status": status, "updated": time.strftime("%Y-%m-%d %H:%M:%S")}


def plan_study(plan: SearchPlan):
    """The plan's Optuna study."""
    return load_study({"study_name": plan.study_name, "storage": plan.storage})


def _manifest(plan: SearchPlan, experiment: str, status: str) -> dict[str, Any]:
    return with_status({
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
    }, status)


def abandon(plan: SearchPlan, manifest: dict[str, Any]) -> None:
    """Give up an unresumable run: its RUNNING trials FAIL, and a new search may start here."""
    study = load_study(manifest)
    fail_running_trials(study, manifest["experiment"], untagged=True)
    write_manifest(plan.run_dir, with_status(manifest, "abandoned"))


def check_extension(plan: SearchPlan) -> dict[str, Any] | None:
    """The previous manifest of this run dir, if any. Refuses to start over an unfinished search
    (it should be resumed) or one whose trials would not be comparable with this one's (another
    space, tasks or budget)."""
    if not (plan.run_dir / MANIFEST).is_file():
        return None
    previous = read_manifest(plan.run_dir, needs=())  # status and fingerprint, read with .get
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
        write_manifest(plan.run_dir, _manifest(plan, experiment, "running"))
        log(f"running {plan.settings.num_samples} trials, up to {concurrency} at a time; "
            f"resume after an interruption with: vlpuda search --resume {plan.run_dir}")
        tuner = make_tuner(plan, make_trainable(plan, tasks, refs), searcher, concurrency,
                           experiment, (tracker.tune_callback(),) if tracker else ())
        results = fit_tracked(tuner, plan, tracker)
        return finish(plan, experiment, results, log, tracker)


def resume_search(run_dir: str | Path, log: Log = _log) -> Front:
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


def finish(plan: SearchPlan, experiment: str, results, log: Log = _log,
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
    finished = counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"]
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
