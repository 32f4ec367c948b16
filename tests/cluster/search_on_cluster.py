"""Run `vlpuda search --config PRESET` on the Ray cluster at RAY_ADDRESS, then report what the
cluster looks like once the search has returned: one line on stdout, REPORT and then JSON.

Run as a script by tests/cluster/test_cluster_search.py, in its own process: the pytest process
may hold a Ray session of its own (tests/search's), and a process can join one cluster only.

The check runs in the same Ray job as the search, on purpose: Ray removes a job's placement
groups when its driver exits, so a group that a stopped trial leaked is visible only while the
search's job is alive.
"""

from __future__ import annotations

import json
import sys
import time

import ray
from ray.util.state import list_actors

from vlpuda.cli import main
from vlpuda.search.cluster import connect_ray
from vlpuda.search.settings import SearchSettings

# The actors that show where each part of a trial ran: Tune's trial (the Train driver), its
# Train controller (always on the driver's node) and the Train workers.
ACTORS = ("ImplicitFunc", "TrainController", "RayTrainWorker")
# Amounts, not slots: the object store's and the heap's "available" move with data, not trials.
NOT_SLOTS = ("memory", "object_store_memory")
REPORT = "cluster after the search: "  # Ray's log lines from other processes may follow it


def slots(resources: dict[str, float]) -> dict[str, float]:
    return {name: round(amount, 4) for name, amount in resources.items()
            if name not in NOT_SLOTS and not name.startswith("node:")}


def live_placement_groups() -> list[dict]:
    return [{"id": pg_id, "state": g["state"], "bundles": g["bundles"]}
            for pg_id, g in ray.util.placement_group_table().items() if g["state"] != "REMOVED"]


def settle(timeout_s: float) -> dict:
    """Wait until every resource is free again and no placement group is left (or time out)."""
    started = time.monotonic()
    while True:
        total, free = slots(ray.cluster_resources()), slots(ray.available_resources())
        groups = live_placement_groups()
        waited = time.monotonic() - started
        if (free == total and not groups) or waited > timeout_s:
            return {"total": total, "free": free, "placement_groups": groups,
                    "settled_after_s": round(waited, 1)}
        time.sleep(0.5)


def actors(timeout_s: float = 90) -> list[dict]:
    """This search's trial actors (the State API also lists dead ones, earlier searches' too).

    Asked again until every kind of trial actor is listed: on a loaded machine the dashboard's
    State API can answer before it has caught up with the actors that ran (or time out)."""
    job = ray.get_runtime_context().get_job_id()
    started = time.monotonic()
    while True:
        try:
            listed = list_actors(filters=[("job_id", "=", job)], limit=10_000, timeout=60,
                                 raise_on_missing_output=False)
        except Exception as error:  # the State API not answering yet: ask again
            print(f"list_actors failed: {error!r}", file=sys.stderr, flush=True)
            listed = []
        found = [{"class_name": a.class_name, "node_id": a.node_id, "state": a.state}
                 for a in listed if a.class_name in ACTORS]
        if {a["class_name"] for a in found} >= set(ACTORS) \
                or time.monotonic() - started > timeout_s:
            return found
        time.sleep(2)


if __name__ == "__main__":
    preset, settle_timeout_s = sys.argv[1], float(sys.argv[2])
    # Joined the way the search joins (through RAY_ADDRESS), but before it: the search then
    # runs in this Ray job and leaves it running afterwards.
    connect_ray(SearchSettings())
    code = main(["search", "--config", preset])
    report = {"exit_code": code, **settle(settle_timeout_s), "actors": actors()}
    print(REPORT + json.dumps(report), flush=True)
    sys.exit(code)
