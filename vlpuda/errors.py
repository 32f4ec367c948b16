"""Errors a user can cause and fix. The CLI prints their message alone, without a traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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


def validation_problems(errors: list[dict[str, Any]], prefix: str = "",
                        unknown: Callable[[str], str] = lambda key: "unknown key") -> list[str]:
    """Pydantic's `ValidationError.errors()` as problems, each naming its key (`prefix.key`).

    Args:
        errors: the items of `err.errors()`.
        prefix: the section the model validated (`search`, `tracking`), or "" for the top level.
        unknown: what to say of an unknown key, given the key (e.g. the valid keys).
    """
    problems = []
    for item in errors:
        key = ".".join([*([prefix] if prefix else []), *(str(part) for part in item["loc"])])
        if item["type"] == "extra_forbidden":
            problems.append(f"{key}: {unknown(key)}")
        elif not key:  # model-level validator: several problems joined with "; "
            message = item["msg"].removeprefix("Value error, ")
            problems.extend(message.split("; "))
        else:
            problems.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return problems
