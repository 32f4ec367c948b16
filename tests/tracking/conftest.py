"""Fixtures for tracking tests: empty MLflow stores and a real `mlflow server` (the local Ray is
`ray_session` in tests/conftest.py).

Creating an MLflow SQLite schema takes ~5-7 s; it is done once per session and the empty
database is copied wherever a test needs a fresh store. The server is a real `mlflow server`
subprocess on a free port, started once per module and killed (its whole process group) at the
end; tests may kill it to simulate an outage and start it again on the same stores.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import write_tiny_task



def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its schema and nothing else, to copy."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with its own SQLite store and artifact folder."""

    def __init__(self, root: Path, template: Path) -> None:
        self.root = root
        self.db = root / "server.db"
        self.artifacts = root / "artifacts"
        shutil.copy(template, self.db)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self, timeout: float = 240.0) -> None:
        if self.process is not None and self.process.poll() is None and self.healthy():
            return
        log = open(self.root / "server.log", "ab")
        mlflow = Path(sys.executable).with_name("mlflow")
        # No background job runner (one more Python process to start on 2 cores); tracking
        # does not use server-side jobs.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        # Its own session, so the server and its uvicorn worker are killed together.
        self.process = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.db}",
             "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited; see {self.root / 'server.log'}")
            if self.healthy():
                return
            time.sleep(0.25)
        self.kill()
        raise RuntimeError(f"mlflow server did not answer in {timeout:.0f} s")

    def kill(self) -> None:
        """SIGKILL the server's process group: an outage, not a clean shutdown."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, empty_mlflow_db):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), empty_mlflow_db)
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory) -> tuple[Path, str]:
    """Two tiny ImageFolder domains and a tiny local-dir ViT (for presets and real training)."""
    return write_tiny_task(tmp_path_factory.mktemp("tiny-tracking"), per_class=8)
