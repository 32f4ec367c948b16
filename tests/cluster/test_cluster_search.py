"""Searches on a real multi-node Ray cluster, all on this machine (ray.cluster_utils.Cluster),
shaped like cluster.yaml: a head with no CPUs and its dashboard, an on-demand node offering
TRAIN_DRIVER for the trials' drivers, and two "GPU" nodes, each with one unit of a custom
resource that stands in for a GPU (trials ask for it through search.worker_resources).

Each search is the real `vlpuda search`, run by search_on_cluster.py in a subprocess connected
through RAY_ADDRESS: the pytest process never joins this cluster, so it cannot collide with the
Ray session tests/search start in the same pytest process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from itertools import groupby
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from helpers import DENSE, LEARNS, seed_study, tiny_train_overrides, write_tiny_domains
from search_on_cluster import REPORT
from vlpuda.errors import ConfigError, VlpudaError
from vlpuda.search.cluster import TRAIN_DRIVER, derive_concurrency, driver_resources
from vlpuda.search.plan import build_plan
from vlpuda.search.settings import SearchSettings, parse_settings

SEARCH_ON_CLUSTER = Path(__file__).with_name("search_on_cluster.py")
ACCELERATOR = "fake_gpu"  # one per GPU node, one per trial: at most one trial per node
# A dead node is noticed in ~1.5 s instead of Ray's ~15 s default (checks every 3 s, 5 misses).
FAST_HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
BUDGET = 10_000  # the dense trial stores ~27k parameters after one epoch, the others a few hundred


# ---- settings (no Ray) -----------------------------------------------------------------------


def settings(**values) -> SearchSettings:
    return SearchSettings.model_validate({"num_samples": 16, **values})


def test_drivers_are_pinned_where_the_cluster_offers_train_driver():
    gpu_cluster = {"CPU": 24, TRAIN_DRIVER: 8, "GPU": 2}
    assert driver_resources(settings(), gpu_cluster) == {"CPU": 0.25, TRAIN_DRIVER: 0.01}
    assert driver_resources(settings(), {"CPU": 4}) == {"CPU": 1}  # a laptop: nothing to pin
    assert driver_resources(settings(driver_resources={"CPU": 0.5}), gpu_cluster) \
        == {"CPU": 0.5}  # the user's word wins, also to switch pinning off
    # The GPUs limit, not the thin slivers of TRAIN_DRIVER (800 drivers would fit).
    assert derive_concurrency(settings(gpus_per_trial=1), gpu_cluster) == 2


def test_custom_worker_resources_limit_concurrency_like_gpus():
    two_fake_gpus = {"CPU": 32, ACCELERATOR: 2}
    assert derive_concurrency(settings(worker_resources={ACCELERATOR: 0.5}), two_fake_gpus) == 4
    assert derive_concurrency(settings(worker_resources={ACCELERATOR: 0.5}, workers_per_trial=2),
                              two_fake_gpus) == 2
    with pytest.raises(VlpudaError, match="needs 2 CPU and 1 accelerator_type:H100 but the "
                                          "cluster has 32 CPU and 0 accelerator_type:H100"):
        derive_concurrency(settings(worker_resources={"accelerator_type:H100": 1}), two_fake_gpus)


def test_bad_resources_are_named_by_their_key(tmp_path):
    _, problems = parse_settings({"worker_resources": {ACCELERATOR: -1},
                                  "driver_resources": {TRAIN_DRIVER: "a sliver"}})
    assert any(p.startswith(f"search.worker_resources.{ACCELERATOR}: ") for p in problems)
    assert any(p.startswith(f"search.driver_resources.{TRAIN_DRIVER}: ") for p in problems)

    data = write_tiny_domains(tmp_path / "data", per_class=1)
    preset = tiny_train_overrides(data, "tiny-vit-test", tmp_path / "train")
    preset["search"] = {"worker_resources": {"GPU": 1}, "driver_resources": {"CPU": 0},
                        "run_dir": str(tmp_path / "run")}
    with pytest.raises(ConfigError) as info:
        build_plan(preset)
    problems = "\n".join(info.value.problems)
    assert "search.worker_resources.GPU: set search.cpus_per_worker / gpus_per_trial" in problems
    assert "search.driver_resources: a trial's driver must reserve something" in problems


# ---- the cluster -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """head (CPU: 0, dashboard) + driver node (2 CPU, TRAIN_DRIVER) + 2 GPU nodes (2 CPU and 1
    fake_gpu each: room for two 1-CPU workers, so only fake_gpu keeps it to one), and a
    bystander: a second Ray on this host, as on a shared CI machine.

    Ray Train needs the dashboard's State API to clean up after stopped trials; it finds it
    through RAY_ADDRESS, else by looking for the one Ray on its host. With the bystander there
    are two, so the search's processes must be told their cluster's address (when they had to
    guess, trials stopped early kept their workers' resources)."""
    import ray.experimental.internal_kv as internal_kv
    from ray.cluster_utils import Cluster

    # Starting a node points this process's Ray internal-KV client at the new cluster: it is
    # given back at the end, to this process's own Ray session if it has one (tests/search's).
    session_kv = internal_kv.internal_kv_get_gcs_client()
    # Free ports, not Ray's fixed defaults (8265, 52365): another Ray on this machine (a
    # concurrent test run, tests/search's session, the bystander) may hold those.
    free_ports = {"dashboard_port": None, "dashboard_agent_listen_port": None}
    bystander = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, **free_ports})
    forget_address(bystander)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "_system_config": FAST_HEALTH_CHECKS,
        **free_ports})
    # Cluster records its address in /tmp/ray/ray_current_cluster, where a plain `ray.init()`
    # looks first: any other Ray user on this machine (tests/search's session, a concurrent
    # test run) would join this cluster, or later fail on its dead address. Searches here get
    # the address through RAY_ADDRESS instead.
    forget_address(cluster)
    cluster.driver_node = cluster.add_node(num_cpus=2, resources={TRAIN_DRIVER: 2})
    for _ in range(2):
        add_gpu_node(cluster)
    cluster.wait_for_nodes()
    yield cluster
    # Not cluster.shutdown(): it would drop the internal-KV client of this process's session.
    for node in list(cluster.worker_nodes):
        cluster.remove_node(node)
    cluster.remove_node(cluster.head_node)
    bystander.remove_node(bystander.head_node)
    if session_kv is not None:
        internal_kv._initialize_internal_kv(session_kv)
    else:
        internal_kv._internal_kv_reset()


def forget_address(cluster) -> None:
    from ray._common.utils import reset_ray_address
    from ray._private.utils import read_ray_address

    if read_ray_address() == cluster.address:
        reset_ray_address()


def add_gpu_node(cluster):
    return cluster.add_node(num_cpus=2, resources={ACCELERATOR: 1})


def gpu_node_ids(cluster) -> set[str]:
    return {n.node_id for n in cluster.worker_nodes if n is not cluster.driver_node}


def write_preset(tiny_assets, tmp_path: Path, name: str, search: dict, **train) -> Path:
    data, model = tiny_assets
    preset = tiny_train_overrides(data, model, tmp_path / "train")
    preset.update({"iters_per_epoch": 3, "rst_threshold": 1e-4, **train})
    preset["search"] = {
        "space": "cmkd_rst",
        "space_overrides": {"lr": {"low": 1e-4, "high": 1e-2},
                            "lr_multiplier": {"low": 1, "high": 100}},
        "run_dir": str(tmp_path / name),
        "worker_resources": {ACCELERATOR: 1},  # the stand-in GPU: one trial per GPU node
        **search,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(preset, sort_keys=False))
    return path


def start_search(cluster, preset: Path, settle_s: float = 60) -> subprocess.Popen:
    """`vlpuda search` on the cluster, its output going to PRESET.log (a pipe nobody reads
    while the test waits could fill up and stall the search)."""
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "HF_HUB_OFFLINE": "1",
           "RAY_AUTH_MODE": "disabled"}
    with preset.with_suffix(".log").open("w") as log:
        process = subprocess.Popen([sys.executable, str(SEARCH_ON_CLUSTER), str(preset),
                                    str(settle_s)], env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log = preset.with_suffix(".log")
    return process


def finish_search(process: subprocess.Popen, timeout_s: float = 480) -> tuple[dict, str]:
    """The search's report on the cluster after it returned, and its output. `timeout_s` only
    bounds a hung search (the spread search takes ~3 min on a busy 2-core machine)."""
    try:
        process.wait(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
    out = process.log.read_text()
    assert process.returncode == 0, out[-5000:]
    report = next(line for line in out.splitlines() if line.startswith(REPORT))
    return json.loads(report.removeprefix(REPORT)), out


def run_study(run_dir: Path):
    from vlpuda.layout import read_manifest
    from vlpuda.search.study import load_study

    return load_study(read_manifest(run_dir))


def tune_history(run_dir: Path) -> dict[str, list[dict]]:
    """Every result each trial reported to Tune, in order, retries included."""
    import ray.tune

    from vlpuda.layout import read_manifest

    manifest = read_manifest(run_dir)
    analysis = ray.tune.ExperimentAnalysis(str(Path(manifest["ray_storage"])
                                               / manifest["experiment"]))
    return {trial_id: frame.to_dict("records")
            for trial_id, frame in analysis.trial_dataframes.items()}


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = most = 0
    for _, step in events:  # at a tie an end (-1) sorts first: touching is not overlapping
        open_now += step
        most = max(most, open_now)
    return most


def assert_cluster_is_idle(report: dict) -> None:
    assert report["placement_groups"] == []
    assert report["free"] == report["total"]


# ---- searches on the cluster -----------------------------------------------------------------


@pytest.fixture(scope="module")
def spread_search(cluster, tiny_assets, tmp_path_factory) -> tuple[dict, str, Path, set[str]]:
    """Three trials on two GPU nodes; the dense one is stopped by the stored-params budget
    after its first epoch (its Tune trial, Train controller and workers are killed)."""
    tmp_path = tmp_path_factory.mktemp("spread")
    run_dir = tmp_path / "spread"
    seed_study(run_dir, "spread", LEARNS, DENSE, {**LEARNS, "lr": 2e-3})
    preset = write_preset(tiny_assets, tmp_path, "spread",
                          {"num_samples": 3, "stored_params_budget": BUDGET}, epochs=2)
    gpu_nodes = gpu_node_ids(cluster)
    report, out = finish_search(start_search(cluster, preset))
    return report, out, run_dir, gpu_nodes


@pytest.mark.slow
def test_trials_spread_over_gpu_nodes_within_their_share(cluster, spread_search):
    report, out, run_dir, gpu_nodes = spread_search
    assert "up to 2 at a time" in out  # derived from 2 fake_gpu, 1 per trial
    history = tune_history(run_dir)
    assert len(history) == 3
    nodes = {r["node_id"] for results in history.values() for r in results}
    assert nodes == gpu_nodes  # the trials' workers used both GPU nodes ...
    spans = {trial: (min(r["worker_started_at"] for r in results),
                     max(r["reported_at"] for r in results))
             for trial, results in history.items()}
    for node in nodes:  # ... one trial at a time on each
        on_node = [spans[t] for t, results in history.items() if results[0]["node_id"] == node]
        assert max_overlap(on_node) == 1, on_node
    assert max_overlap(list(spans.values())) == 2  # two trials did run at once

    # Every trial's driver ran on the on-demand driver node, never on a GPU node; its Train
    # controller with it; its workers on GPU nodes.
    driver_node = cluster.driver_node.node_id
    placed = {}
    for actor in report["actors"]:
        placed.setdefault(actor["class_name"], set()).add(actor["node_id"])
    assert placed.get("ImplicitFunc") == {driver_node}, report["actors"]
    assert placed.get("TrainController") == {driver_node}, report["actors"]
    assert placed.get("RayTrainWorker") == gpu_nodes, report["actors"]


@pytest.mark.slow
def test_early_stopped_trials_give_all_resources_back(spread_search):
    report, out, run_dir, _ = spread_search
    study = run_study(run_dir)
    learns, dense, learns_again = study.trials
    assert (dense.state, dense.user_attrs["stopped_by"]) == (TrialState.PRUNED,
                                                             "stored_params_budget")
    assert learns.state == learns_again.state == TrialState.COMPLETE
    # Once the search is over, but while its Ray job is still alive (so nothing is cleaned up
    # by the job ending): every CPU, fake_gpu and TRAIN_DRIVER sliver is free again and no
    # placement group is left, the stopped trial's Train workers' group included.
    assert_cluster_is_idle(report)
    assert report["total"][ACCELERATOR] == 2 and report["total"][TRAIN_DRIVER] == 2


@pytest.mark.slow
def test_a_lost_gpu_node_costs_a_retry_from_the_last_checkpoint(cluster, tiny_assets, tmp_path):
    # Epochs of several seconds: an idle machine trains 24 tiny iterations in under a second,
    # less than Tune takes to hear of an epoch, and the trial could finish before the plug is
    # pulled.
    preset = write_preset(tiny_assets, tmp_path, "lost", {"num_samples": 2}, epochs=3,
                          iters_per_epoch=200)
    run_dir = tmp_path / "lost"
    search = start_search(cluster, preset)
    try:
        # As soon as Tune has a trial's first epoch, the GPU node it trains on disappears (as
        # a spot node does); a fresh one joins so that the retried trial has somewhere to go.
        trial, node_id = wait_for_first_epoch(run_dir, search)
        cluster.remove_node(next(n for n in cluster.worker_nodes if n.node_id == node_id),
                            allow_graceful=False)
        add_gpu_node(cluster)
    except BaseException:
        search.kill()  # not left running against a cluster about to go
        raise
    report, out = finish_search(search)

    study = run_study(run_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2  # the front is complete
    history = tune_history(run_dir)
    results = history[trial]
    assert len({r["worker_started_at"] for r in results}) == 2, results  # it was interrupted
    # ... and resumed from its checkpoint: its epochs go on where they stopped, never back to 1
    # (the retry first reports its checkpoint's epoch again: Tune may not have heard of it, so
    # an epoch may repeat right after itself), and the epochs after the loss ran on another node.
    epochs = [r["epoch"] for r in results]
    assert [e for e, _ in groupby(epochs)] == [1, 2, 3], epochs
    assert results[0]["node_id"] == node_id != results[-1]["node_id"]
    assert_cluster_is_idle(report)


def wait_for_first_epoch(run_dir: Path, search: subprocess.Popen,
                         timeout_s: float = 180) -> tuple[str, str]:
    """The first trial Tune has an epoch of (the search prints a line as each result arrives),
    and the node that trained it, from the metrics saved with that epoch's checkpoint.

    Not the first checkpoint on disk: Train resumes from a checkpoint only once it has
    processed its report; a checkpoint uploaded by a worker that died before that is ignored.
    """
    first_epoch = re.compile(r"trial (\S+) epoch 1/")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert search.poll() is None, search.log.read_text()[-5000:]
        log = search.log.read_text()
        match = first_epoch.search(log)
        if match:
            # Trials are named by their Optuna number (t00); the start line gives Tune's id.
            started = re.search(rf"trial {re.escape(match.group(1))} started \(Tune trial (\S+)\)",
                                log)
            trial = started.group(1) if started else match.group(1)
            run = run_dir / "ray" / "train" / f"train-trial_id={trial}"
            saved = next(run.glob("checkpoint_*/metrics.json"))
            return trial, json.loads(saved.read_text())["node_id"]
        time.sleep(0.1)
    raise TimeoutError(f"no trial reported an epoch within {timeout_s} s")
