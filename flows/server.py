"""The project's own long-lived Prefect server, so that runs stay in the UI afterwards and
stages do not each start a temporary one (about 20 s apiece).

    .venv/bin/python -m flows.server start   # in the background, data in .prefect/
    .venv/bin/python -m flows.server url     # the API to use (started when needed)
    .venv/bin/python -m flows.server stop

A Prefect API the user configured (PREFECT_API_URL, in the environment or the Prefect
profile) always wins: nothing is started then. `make pipeline`, `make prefect-ui` and
`python -m flows.pipeline` use this module; `make prefect-stop` stops the server.
Beside the server runs the warm stage runner (flows/warm.py), which starts stages with
Prefect and torch already imported; it stops with the server.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.settings import PREFECT_API_URL

from anime_face_id.fileio import atomic_write_text
from anime_face_id.privacy import TELEMETRY_OFF

PROJECT_HOME = Path(".prefect")  # under the project root; ignored by git
API_URL_FILE = PROJECT_HOME / "api_url"  # where the running project server answers
# What the server writes (its start, its services' errors), appended across starts.
SERVER_LOG = PROJECT_HOME / "server.log"
# Where `prefect server stop` looks for the server's process (PREFECT_HOME/server.pid).
SERVER_PID = PROJECT_HOME / "server.pid"
DEFAULT_PORT = 4200
START_TIMEOUT_S = 180.0


def configured_api_url() -> str | None:
    return PREFECT_API_URL.value() or None


def answers(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def _server_env(root: Path) -> dict[str, str]:
    env = {**os.environ, **TELEMETRY_OFF, "PREFECT_HOME": str((root / PROJECT_HOME).resolve())}
    env.pop("PREFECT_API_URL", None)  # the server itself is no client of another
    return env


def _prefect(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=root,
        env=_server_env(root),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def project_port() -> int:
    return int(os.environ.get("PREFECT_PORT") or DEFAULT_PORT)  # as make's PREFECT_PORT


def ensure_server(root: Path, port: int | None = None) -> str:
    """The Prefect API to report to: the configured one, else the project's server on
    127.0.0.1:``port`` (default $PREFECT_PORT, else 4200), started in the background when
    it is not answering."""
    configured = configured_api_url()
    if configured:
        return configured
    port = port or project_port()
    url = f"http://127.0.0.1:{port}/api"
    if answers(url):
        _remember(root, url)
        return url
    # One starter at a time (make prefect-ui and make pipeline may race): the second
    # waits here and then finds the first one's server answering.
    with _start_lock(root):
        if not answers(url):
            _start_and_wait(root, port, url)
    _remember(root, url)
    return url


@contextmanager
def _start_lock(root: Path) -> Iterator[None]:
    home = root / PROJECT_HOME
    home.mkdir(parents=True, exist_ok=True)
    with (home / "server.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _start_and_wait(root: Path, port: int, url: str) -> None:
    print(f"starting the project's Prefect server on http://127.0.0.1:{port} (data in {PROJECT_HOME}/)",
          file=sys.stderr)  # fmt: skip
    server = start_in_background(root, port)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers(url):
        if server.poll() is not None or time.monotonic() > deadline:
            log = (root / SERVER_LOG).read_text(errors="replace").strip().splitlines()[-5:]
            why = (
                "exited"
                if server.poll() is not None
                else f"did not answer in {START_TIMEOUT_S:g} s"
            )
            raise SystemExit(
                f"error: the Prefect server on {url} {why} (its log: {SERVER_LOG})"
                + "".join(f"\n  {line}" for line in log)
            )
        time.sleep(0.5)
    # written once it answers, so a server that never came up leaves no pid behind
    atomic_write_text(root / SERVER_PID, str(server.pid))


def start_in_background(root: Path, port: int) -> subprocess.Popen:
    """`prefect server start` in a session of its own, writing to SERVER_LOG.

    Not `prefect server start --background`: that leaves the server's output on pipes
    nobody reads once the command returns, and the server dies at the first error its
    services log (or hangs once 64 KB of output fill the pipe). The caller writes the pid
    file `prefect server stop` reads once the server answers."""
    home = root / PROJECT_HOME
    home.mkdir(parents=True, exist_ok=True)
    with (root / SERVER_LOG).open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=root, env=_server_env(root), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _remember(root: Path, url: str) -> None:
    """Record the project server's API for stages run by a bare `dvc repro`, and have the
    warm stage runner (flows/warm.py) beside it."""
    from flows import warm

    path = root / API_URL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, url + "\n")
    warm.start(root)


def running_project_server(root: Path) -> str | None:
    """The project server's API when it was started here and still answers; a stage run
    by a bare `dvc repro` reports to it instead of starting a temporary server."""
    try:
        url = (root / API_URL_FILE).read_text().strip()
    except OSError:
        return None
    return url if url and answers(url) else None


def stop_server(root: Path) -> str:
    """Stop the project's server and its warm stage runner."""
    from flows import warm

    stale = _forget_a_stale_pid(root)
    stopped = _prefect(root, "server", "stop")
    (root / API_URL_FILE).unlink(missing_ok=True)
    warm.stop(root)
    said = (stopped.stdout + stopped.stderr).strip() or "stopped"
    return f"{stale}\n{said}" if stale else said


def _forget_a_stale_pid(root: Path) -> str | None:
    """`prefect server stop` signals whatever process has the recorded pid. After a crash
    or a reboot that pid can belong to another program: then the file goes, unsignalled."""
    try:
        pid = int((root / SERVER_PID).read_text().strip())
    except (OSError, ValueError):
        return None
    command = _command_line(pid)
    if command is not None and "prefect" in command and "server" in command:
        return None
    (root / SERVER_PID).unlink(missing_ok=True)
    now = "no process" if command is None else f"another program ({command[:80]})"
    return f"the recorded server (pid {pid}) is gone and the pid is {now}: left alone"


def _command_line(pid: int) -> str | None:
    """The command line of a running process, or None when there is none."""
    if Path("/proc/self/cmdline").exists():  # Linux
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None
    found = subprocess.run(  # elsewhere (macOS)
        ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return (found.stdout.strip() or None) if found.returncode == 0 else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("command", choices=("start", "url", "stop"))
    parser.add_argument("--port", type=int, default=None, help="default $PREFECT_PORT, else 4200")
    parser.add_argument("--root", type=Path, default=Path("."), help="project root (a folder)")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(
            f"--root {args.root}: not a folder (the project root, where .prefect/ is kept)"
        )
    if args.command == "stop":
        print(stop_server(args.root))
        return
    url = ensure_server(args.root, args.port)
    if args.command == "url":
        print(url)
    else:
        print(f"Prefect API {url}; UI {url.removesuffix('/api')}")


if __name__ == "__main__":
    main()
