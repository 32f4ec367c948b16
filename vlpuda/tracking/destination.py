"""Where a search logs: the tracking URI, the artifact location, and how to open the UI.

MLflow's own default (`sqlite:///mlflow.db`, artifacts in `./mlruns`) is relative to the working
directory, and a stale `./mlruns` file store makes it fail outright (research/ray_stack.md section
3). A search therefore always logs to an absolute destination: by default a SQLite database and an
artifact folder inside its run directory, so `cd` never changes where results go. Any other
database URL or an `http(s)://` tracking server may be given instead.

The chosen destination is written to `<run_dir>/tracking.json`, so `vlpuda sync RUN_DIR` and
`vlpuda export` find it again without being told.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from vlpuda.errors import VlpudaError

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
DESTINATION_FILE = "tracking.json"
# Database URL schemes MLflow's SQLAlchemy store accepts, besides sqlite.
_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
# Short HTTP limits when the user has not chosen any: MLflow's defaults (7 retries with
# exponential backoff, 120 s timeout) would stall the Tune event loop for minutes per call while
# a server is down; one failed call is enough to switch tracking off (see guard.py).
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
    artifacts = str(run_dir / ARTIFACT_DIR)
    if uri is None or not uri.strip():
        return Destination(_sqlite_uri(run_dir / DB_FILE), artifacts)
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
        f"it unset for the search's own RUN_DIR/{DB_FILE} (MLflow 3 no longer writes to ./mlruns "
        "file stores)"
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

