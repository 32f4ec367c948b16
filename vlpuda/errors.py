"""Errors a user can cause and fix. The CLI prints their message alone, without a traceback."""

from __future__ import annotations


class VlpudaError(Exception):
    """Base class: the message says what went wrong, where (file or key), and what to do."""


class ConfigError(VlpudaError):
    """A config or space file is invalid; the message lists every problem with its key."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        head = f"invalid config{f' {source}' if source else ''}:"
        super().__init__("\n  - ".join([head, *self.problems]))


class DataError(VlpudaError):
    """A dataset is missing, unreadable or inconsistent (class lists differ, corrupt image)."""


class ModelLoadError(VlpudaError):
    """A model name or its weights cannot be resolved."""
