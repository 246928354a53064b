"""A real Prefect server on 127.0.0.1 for tests that run flows in subprocesses (dvc repro)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.processes import free_port, running_server


def quiet_prefect_env(home: Path) -> dict[str, str]:
    """Environment for Prefect processes in tests: own home, no telemetry or update checks."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }


@contextmanager
def prefect_server(
    home: Path, timeout_s: float = 120.0, extra_env: dict[str, str] | None = None
) -> Iterator[str]:
    """Start `prefect server start` and yield its API URL; stop it afterwards.
    ``extra_env``: e.g. the database it keeps its runs in."""
    port = free_port()
    env = {**os.environ, **quiet_prefect_env(home), **(extra_env or {})}
    env.pop("PREFECT_API_URL", None)
    url = f"http://127.0.0.1:{port}/api"
    command = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with running_server(
        command, f"{url}/health", home / "server.log", env=env, timeout_s=timeout_s
    ):
        yield url
