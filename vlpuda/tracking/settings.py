"""The `tracking:` section of a preset, validated before Ray starts.

    tracking:
      uri: http://head:5000     # default: MLFLOW_TRACKING_URI, else sqlite:///<run_dir>/mlflow.db
      experiment: office-home   # default: the search's name
      enabled: true             # false: no MLflow at all (results stay in Tune and Optuna)

`vlpuda search --tracking-uri URI` and `--no-tracking` write into this section, so the run dir's
manifest keeps the choice and `--resume` logs to the same place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from vlpuda.errors import ConfigError
from vlpuda.tracking.destination import TrackingError, resolve_destination

TRACKING_KEY = "tracking"


class TrackingSettings(BaseModel):
    """Where and whether a search logs to MLflow."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None

    def effective_uri(self) -> str | None:
        """The configured URI, else MLFLOW_TRACKING_URI, else None (the run dir's store)."""
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def tracking_settings(raw: dict[str, Any], source: str | None = None) -> TrackingSettings:
    """The validated `tracking:` section of a preset (defaults when it has none).

    Raises:
        ConfigError: naming each bad key (`tracking.uri: ...`).
    """
    section = raw.get(TRACKING_KEY) or {}
    if not isinstance(section, dict):
        raise ConfigError([f"{TRACKING_KEY}: expected a mapping (uri, experiment, enabled), "
                           f"got {section!r}"], source)
    try:
        settings = TrackingSettings.model_validate(section)
    except ValidationError as err:
        problems = []
        for item in err.errors():
            key = ".".join([TRACKING_KEY, *(str(p) for p in item["loc"])])
            if item["type"] == "extra_forbidden":
                problems.append(f"{key}: unknown key; valid: uri, experiment, enabled")
            else:
                problems.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
        raise ConfigError(problems, source) from None
    if settings.enabled:
        try:
            resolve_destination(settings.effective_uri(), Path.cwd())
        except TrackingError as err:
            raise ConfigError([f"{TRACKING_KEY}.uri: {err}"], source) from None
    return settings


def with_cli_choices(raw: dict[str, Any], uri: str | None, enabled: bool | None
                     ) -> dict[str, Any]:
    """The preset with `--tracking-uri` / `--no-tracking` written into its tracking section."""
    section = dict(raw.get(TRACKING_KEY) or {})
    if uri is not None:
        section["uri"] = uri
    if enabled is not None:
        section["enabled"] = enabled
    return {**raw, TRACKING_KEY: section} if section else dict(raw)
