"""MLflow tracking of searches: parent and child runs, the front on the parent, back-fill, export.

    tracker = open_search_tracker(plan, tune_experiment)  # parent run (None: tracking off);
    callbacks = [tracker.tune_callback()]                  #   never raises on a dead server
    ...tuner.fit()...
    tracker.finish(study)                                  # front table/CSV/figure, HV, tags

    sync_run_dir(run_dir)          # `vlpuda sync`: fill MLflow in from Tune and Optuna storage
    export_delta(run_id, out_dir)  # `vlpuda export`: a trial's best delta

MLflow is imported lazily by the parts that talk to it, so importing this package is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "Destination",
    "SearchInfo",
    "SearchTracker",
    "TrackingCallback",
    "TrackingError",
    "export_delta",
    "open_search_tracker",
    "resolve_destination",
    "search_info",
    "sync_run_dir",
    "tracking_settings",
    "ui_command",
    "with_cli_choices",
]

_WHERE = {
    "Destination": "destination",
    "TrackingError": "destination",
    "resolve_destination": "destination",
    "ui_command": "destination",
    "SearchInfo": "describe",
    "search_info": "describe",
    "SearchTracker": "tracker",
    "open_search_tracker": "tracker",
    "tracking_settings": "settings",
    "with_cli_choices": "settings",
    "TrackingCallback": "callback",
    "sync_run_dir": "sync",
    "export_delta": "export",
}

if TYPE_CHECKING:
    from vlpuda.tracking.callback import TrackingCallback
    from vlpuda.tracking.describe import SearchInfo, search_info
    from vlpuda.tracking.destination import (
        Destination,
        TrackingError,
        resolve_destination,
        ui_command,
    )
    from vlpuda.tracking.export import export_delta
    from vlpuda.tracking.sync import sync_run_dir
    from vlpuda.tracking.settings import tracking_settings, with_cli_choices
    from vlpuda.tracking.tracker import SearchTracker, open_search_tracker


def __getattr__(name: str) -> Any:
    # Lazy: the callback imports Ray, the tracker MLflow; `vlpuda export` needs neither of Ray.
    if name not in _WHERE:
        raise AttributeError(f"module 'vlpuda.tracking' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"vlpuda.tracking.{_WHERE[name]}"), name)
