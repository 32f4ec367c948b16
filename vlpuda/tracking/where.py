"""Where a search logs: the `tracking:` section, the tracking URI resolved once, and the UI.

MLflow's own default (`sqlite:///mlflow.db`, artifacts in `./mlruns`) is relative to the working
directory, and a stale `./mlruns` file store makes it fail outright
(docs/search.md#mlflow-destination). A search therefore always logs to an absolute destination:
by default a SQLite database and an artifact folder inside its run directory, so `cd` never
changes where results go. Any other
database URL or an `http(s)://` tracking server may be given instead.

The URI is resolved once, when the search's plan is built (`plan_tracking`: the preset's
`tracking:` section, else MLFLOW_TRACKING_URI, else the run dir's store), and the plan carries
the typed result. The chosen destination is written to `<run_dir>/tracking.json`, so
`vlpuda sync RUN_DIR` and `vlpuda export` find it again without being told.

    tracking:
      uri: http://head:5000     # default: MLFLOW_TRACKING_URI, else sqlite:///<run_dir>/mlflow.db
      experiment: office-home   # default: the search's name
      enabled: true             # false: no MLflow at all (results stay in Tune and Optuna)

`vlpuda search --tracking-uri URI` and `--no-tracking` write into this section, so the run dir's
manifest keeps the choice and `--resume` logs to the same place.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from vlpuda.errors import ConfigError, VlpudaError, validation_problems
from vlpuda.layout import DESTINATION_FILE, MLFLOW_ARTIFACTS, MLFLOW_DB

TRACKING_KEY = "tracking"
# Database URL schemes MLflow's SQLAlchemy store accepts, besides sqlite.
_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
# Short HTTP limits when the user has not chosen any: MLflow's defaults (7 retries with
# exponential backoff, 120 s timeout) would stall the Tune event loop for minutes per call while
# a server is down; one failed call is enough to switch tracking off (see live.py's Guard).
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    # Closing a run on a server prints its URL: one line per trial in the search's console.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


class TrackingError(VlpudaError):
    """A tracking URI that cannot work, or a run that cannot be found."""


@dataclass(frozen=True)
class Destination:
    """An MLflow tracking URI and, for local stores, where artifacts go.

    Attributes:
        uri: the tracking URI, absolute (sqlite:////abs/mlflow.db, http://host:5000, ...).
        artifact_location: the artifact root given to experiments this package creates; None for
            a tracking server, which decides itself (it proxies artifacts or names a bucket).
    """

    uri: str
    artifact_location: str | None = None

    @property
    def is_http(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    @property
    def is_sqlite(self) -> bool:
        return self.uri.startswith("sqlite:")


def _sqlite_uri(path: Path) -> str:
    # sqlite:/// + an absolute path (which starts with "/") gives the four slashes SQLAlchemy
    # reads as absolute.
    return f"sqlite:///{path.expanduser().resolve()}"


def _absolute_sqlite(uri: str) -> str:
    """A sqlite URI with its file path made absolute (relative ones follow the cwd)."""
    path = uri[len("sqlite:///"):]
    if not path or path == ":memory:":
        raise TrackingError(f"tracking URI {uri!r}: an in-memory database keeps nothing after the "
                            "search; give a file, e.g. sqlite:////abs/path/mlflow.db")
    return _sqlite_uri(Path(path))


def resolve_destination(uri: str | None, run_dir: Path) -> Destination:
    """The destination for a search whose run directory is `run_dir`.

    Args:
        uri: what the user asked for: None (the default SQLite store in the run dir), a database
            URL (sqlite:///..., postgresql://...), an http(s) tracking server, or a path to a
            `.db` file.
        run_dir: the search's run directory (absolute or relative to the cwd).

    Raises:
        TrackingError: for a URI MLflow 3 cannot log a search to (the file store, an unknown
            scheme, an in-memory database).
    """
    run_dir = Path(run_dir).expanduser().resolve()
    artifacts = str(run_dir / MLFLOW_ARTIFACTS)
    if uri is None or not uri.strip():
        return Destination(_sqlite_uri(run_dir / MLFLOW_DB), artifacts)
    uri = uri.strip()
    if uri.startswith(("http://", "https://")):
        return Destination(uri.rstrip("/"))
    if uri.startswith("sqlite:///"):
        return Destination(_absolute_sqlite(uri), artifacts)
    if uri.split(":", 1)[0].split("+", 1)[0] in _DATABASE_SCHEMES:
        return Destination(uri, artifacts)
    if "://" not in uri and uri.endswith(".db"):
        return Destination(_sqlite_uri(Path(uri)), artifacts)
    raise TrackingError(
        f"tracking URI {uri!r} is not supported: give an http(s):// tracking server, a database "
        f"URL (sqlite:////abs/path/mlflow.db, postgresql://...), a path to a .db file, or leave "
        f"it unset for the search's own RUN_DIR/{MLFLOW_DB} (MLflow 3 no longer writes to "
        "./mlruns file stores)"
    )


def limit_http_retries() -> None:
    """Short MLflow HTTP retries and timeout (and no URL per closed run) for this process,
    unless the user set their own."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def server_problem(dest: Destination, timeout: float = 3.0) -> str | None:
    """Why an http(s) tracking server cannot be used right now, or None when it answers.

    Asks the server's /health endpoint with a short timeout, so a dead server is noticed in
    seconds rather than after MLflow's retries. Other stores are not probed here: opening them
    is the test.
    """
    if not dest.is_http:
        return None
    try:
        with urllib.request.urlopen(f"{dest.uri}/health", timeout=timeout) as response:
            if response.status == 200:
                return None
            return f"{dest.uri}/health answered HTTP {response.status}"
    except urllib.error.HTTPError as err:
        return f"{dest.uri}/health answered HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"cannot reach {dest.uri} ({reason})"


def ui_command(dest: Destination) -> str:
    """The command that opens the MLflow UI on this destination's runs."""
    if dest.is_http:
        return f"open {dest.uri} in a browser"
    command = f"mlflow ui --backend-store-uri {dest.uri}"
    if dest.artifact_location:
        # Experiments made here already name their artifact folder; the flag only keeps
        # experiments created from the UI out of the cwd's ./mlartifacts.
        command += f" --default-artifact-root {dest.artifact_location}"
    return command


def write_destination(run_dir: Path, dest: Destination) -> None:
    """Remember the destination in the run dir (for sync and export)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = run_dir / f".{DESTINATION_FILE}.tmp"
    staging.write_text(json.dumps(asdict(dest), indent=2))
    staging.replace(run_dir / DESTINATION_FILE)


def read_destination(run_dir: Path) -> Destination | None:
    """The destination a search in `run_dir` logged to, or None if it never recorded one."""
    path = Path(run_dir).expanduser() / DESTINATION_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return Destination(data["uri"], data.get("artifact_location"))



# ---- the `tracking:` section, resolved into the plan ------------------------------------------


class TrackingSettings(BaseModel):
    """Where and whether a search logs to MLflow, as the preset says."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None

    def effective_uri(self) -> str | None:
        """The configured URI, else MLFLOW_TRACKING_URI, else None (the run dir's store)."""
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI") or None


@dataclass(frozen=True)
class TrackingPlan:
    """Where a search logs, resolved once (the search plan carries it).

    Attributes:
        enabled: False: no MLflow at all.
        experiment: the MLflow experiment; None: the search's name.
        destination: the resolved destination; None only when tracking is off and its URI could
            never work (`problem` says why).
    """

    enabled: bool
    experiment: str | None
    destination: Destination | None
    problem: str | None = None


def tracking_settings(raw: dict[str, Any], source: str | None = None) -> TrackingSettings:
    """The validated `tracking:` section of a preset (defaults when it has none), as written.

    Raises:
        ConfigError: naming each bad key (`tracking.experimnt: unknown key ...`).
    """
    section = raw.get(TRACKING_KEY) or {}
    if not isinstance(section, dict):
        raise ConfigError([f"{TRACKING_KEY}: expected a mapping (uri, experiment, enabled), "
                           f"got {section!r}"], source)
    try:
        return TrackingSettings.model_validate(section)
    except ValidationError as err:
        problems = validation_problems(
            err.errors(), TRACKING_KEY,
            unknown=lambda key: "unknown key; valid: uri, experiment, enabled")
        raise ConfigError(problems, source) from None


def _resolve(settings: TrackingSettings, run_dir: Path, source: str | None) -> TrackingPlan:
    try:
        dest, problem = resolve_destination(settings.effective_uri(), run_dir), None
    except TrackingError as err:
        if settings.enabled:
            raise ConfigError([f"{TRACKING_KEY}.uri: {err}"], source) from None
        dest, problem = None, str(err)
    return TrackingPlan(settings.enabled, settings.experiment, dest, problem)


def plan_tracking(raw: dict[str, Any], run_dir: Path, source: str | None = None
                  ) -> TrackingPlan:
    """The preset's `tracking:` section, validated, its URI resolved for `run_dir`: the one
    place a search's tracking URI is resolved.

    Raises:
        ConfigError: naming each bad key (`tracking.uri: ...`); a URI that can never work is
            one only while tracking is on.
    """
    return _resolve(tracking_settings(raw, source), run_dir, source)


def with_cli_choices(raw: dict[str, Any], uri: str | None, enabled: bool | None
                     ) -> dict[str, Any]:
    """The preset with `--tracking-uri` / `--no-tracking` written into its tracking section."""
    section = dict(raw.get(TRACKING_KEY) or {})
    if uri is not None:
        section["uri"] = uri
    if enabled is not None:
        section["enabled"] = enabled
    return {**raw, TRACKING_KEY: section} if section else dict(raw)


def given_destination(tracking_uri: str | None) -> Destination:
    """The destination --tracking-uri names (a URI, or a search's run dir), else the
    MLFLOW_TRACKING_URI environment variable (for `vlpuda export`)."""
    given = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not given:
        raise TrackingError("no tracking URI: pass --tracking-uri (the one the search printed, "
                            "e.g. sqlite:////abs/runs/demo/mlflow.db, or the run dir itself) or "
                            "set MLFLOW_TRACKING_URI")
    as_dir = Path(given).expanduser()
    if "://" not in given and as_dir.is_dir():
        recorded = read_destination(as_dir)
        return recorded or resolve_destination(None, as_dir)
    return resolve_destination(given, Path.cwd())


# ---- the UI -----------------------------------------------------------------------------------
# MLflow 3.17's UI picks GenAI or model-training mode from this URL parameter (else from the
# browser's last choice, GenAI by default), not from the experiment's kind tag.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default


def experiment_page(experiment_id: str, base: str | None = None) -> str:
    """The URL of the experiment's runs table in MLflow's UI, in model-training mode."""
    return f"{(base or LOCAL_UI).rstrip('/')}/#/experiments/{experiment_id}?{MODEL_TRAINING_VIEW}"
