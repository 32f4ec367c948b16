"""Tracking that can fail without failing the search.

Results live in Tune's experiment directory and the Optuna study; MLflow is a view of them. So a
tracking call that fails (server down, network gone, database locked) must never stop a search:
the first failure prints one warning saying how to fill MLflow in later, and every later call is
skipped, so a dead server costs one timeout rather than one per trial and epoch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

Log = Callable[[str], None]
T = TypeVar("T")


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Guard:
    """Runs tracking calls; after the first failure it warns once and turns tracking off.

    Args:
        where: the destination, named in the warning.
        remedy: what the user can run to fill MLflow in afterwards.
        log: where the warning goes (stderr by default).
    """

    def __init__(self, where: str, remedy: str, log: Log = warn) -> None:
        self.where, self.remedy, self.log = where, remedy, log
        self.failure: str | None = None

    @property
    def enabled(self) -> bool:
        return self.failure is None

    def disable(self, reason: str) -> None:
        """Turn tracking off with one warning (later calls say nothing)."""
        if self.failure is not None:
            return
        self.failure = reason
        self.log(f"warning: MLflow tracking at {self.where} failed: {reason}. The search goes "
                 f"on and its results are kept in the Tune and Optuna storage; MLflow logging is "
                 f"off for the rest of it. Fill MLflow in later with: {self.remedy}")

    def run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """`call(*args, **kwargs)`, or None when tracking is off or the call fails."""
        if self.failure is not None:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as err:  # any failure of a view must not end the search
            self.disable(_describe(err))
            return None


def _describe(err: Exception) -> str:
    """The exception in one line: MLflow's messages can carry whole tracebacks."""
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(err).__name__}: {first[:300]}" if first else type(err).__name__
