"""Starting real servers (Prefect, MLflow, Streamlit) as subprocesses for tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def as_in_a_terminal() -> None:
    """The signal dispositions of a command typed in a terminal (a ``preexec_fn``): the
    test may run where they are ignored (a background job ignores SIGINT, and Python then
    never raises KeyboardInterrupt; `nohup` ignores SIGHUP)."""
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def running_server(
    command: Sequence[str],
    health_url: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 120.0,
) -> Iterator[subprocess.Popen]:
    """Start ``command``, wait until ``health_url`` answers 200, stop it afterwards.
    If it exits or never answers, the error carries the end of its log."""
    log = log_path.open("wb")
    process = subprocess.Popen(
        list(command),
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while not answers(health_url):
            if process.poll() is not None or time.monotonic() > deadline:
                why = "exited" if process.poll() is not None else "did not answer in time"
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{command[0:3]} {why}:\n{tail}")
            time.sleep(0.5)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


REPO = Path(__file__).resolve().parents[2]


def stage_command(stage: str) -> list[str]:
    """`sh flows/run <stage>`: the command a DVC stage's cmd runs."""
    return ["sh", str(REPO / "flows" / "run"), stage]


def stage_env(env: dict[str, str]) -> dict[str, str]:
    """A stage's environment: this one with ``env``, the repository importable and this
    interpreter as the project's (`flows/run` picks it)."""
    import os
    import sys

    return {
        **os.environ,
        **env,
        "PYTHONPATH": str(REPO),
        "ANIME_FACE_ID_PYTHON": sys.executable,
    }


def run_stage_flow(
    stage: str, project: Path, env: dict[str, str], timeout_s: float = 300
) -> subprocess.CompletedProcess:
    """`sh flows/run <stage>` (`python -m flows.<stage>` with this interpreter) in
    ``project``, as a DVC stage's cmd runs it, with the repository importable; stdout and
    stderr captured as text."""
    return subprocess.run(
        stage_command(stage),
        cwd=project,
        env=stage_env(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
