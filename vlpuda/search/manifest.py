"""The run directory's manifest as the driver keeps it: what a search writes there, when a new
search may start over an old one, and giving up a run that cannot be resumed.
"""

from __future__ import annotations

import time
from typing import Any

from vlpuda.errors import ConfigError
from vlpuda.layout import MANIFEST, read_manifest, write_manifest
from vlpuda.search.plan import SearchPlan
from vlpuda.search.study import fail_running_trials, load_study


def with_status(manifest: dict[str, Any], status: str) -> dict[str, Any]:
    """The manifest with a new status, stamped with the time."""
    return {**manifest, "status": status, "updated": time.strftime("%Y-%m-%d %H:%M:%S")}


def plan_study(plan: SearchPlan):
    """The plan's Optuna study."""
    return load_study({"study_name": plan.study_name, "storage": plan.storage})


def search_manifest(plan: SearchPlan, experiment: str, status: str) -> dict[str, Any]:
    """The manifest a search writes to its run dir: what `--resume` rebuilds the plan from."""
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
