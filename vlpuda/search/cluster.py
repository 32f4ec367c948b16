"""How many trials a Ray cluster holds, and connecting to it.

Resource maths (what one trial's driver and Train workers reserve, how many trials fit the
cluster's totals and its nodes one by one, how many logical CPUs a local Ray needs) and the Ray a
search runs on: the cluster at RAY_ADDRESS, the one `ray start` left on this machine, or a local
one started for the search and shut down after it.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vlpuda.errors import VlpudaError
from vlpuda.search.settings import SearchSettings

# What the search's steps report with: one line each (print, or a test's collector).
Log = Callable[[str], None]

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


def say(message: str) -> None:
    """The default Log: print the line and flush it."""
    print(message, flush=True)


# ---- resource maths --------------------------------------------------------------------------


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


# ---- connecting to Ray -----------------------------------------------------------------------


@contextmanager
def ray_running(settings: SearchSettings, log: Log = say) -> Iterator[None]:
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


def connect_ray(settings: SearchSettings, log: Log = say) -> bool:
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
