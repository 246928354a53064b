"""The warm stage runner: a background process beside the project's Prefect server that has
already imported Prefect, torch, numpy, OpenCV and Pillow, and forks a DVC stage from that
state instead of a fresh interpreter importing them (~1-1.5 s per stage, several seconds on
the few-second stages that adding a character runs).

    .venv/bin/python -m flows.warm --root .     # started by flows.server; not by hand

`sh flows/run <stage>` (every stage's cmd) hands the stage to the runner when its socket is
in .prefect/ (flows/warm_client.py); the stage then runs as `python -m flows.<stage>`
would: the caller's working folder, environment, umask, terminal, signal dispositions and
exit status (death by a signal included); Ctrl-C and Ctrl-Z are passed on; the project's
own code is imported afresh for each stage, so an edit is always seen; Prefect's settings
and console logging are set up again from the caller's environment. The `anime-face-id`
console script (flows/console.py) hands its commands over the same way, and they run as
its `anime_face_id.cli.run` would, logging as a process that never imported Prefect. The
runner declines, and the stage runs cold, when what it imported could differ from what a
fresh interpreter would import: another interpreter or virtual environment, a package
installed or removed since it started, an environment variable read at import time
(Prefect's settings, thread counts, locale, terminal; see `import_sensitive`), or another
CPU affinity, priority, group, cgroup or resource limit. What still differs: `ps` shows a forked stage or command
as a `flows.warm` process, it has no controlling terminal (nothing in either opens
/dev/tty), it gets descriptors 0-2 only, a traceback starts in runpy's and this module's
frames, and a command finds Prefect and requests already imported (so their warning
filters are in place; the command's own output does not depend on them).
ANIME_FACE_ID_WARM=0 turns it off. It stops with the server (`make prefect-stop`), after 30
idle minutes, or when its socket is removed (with .prefect/, say) or taken by another
runner.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import importlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from anime_face_id.fileio import atomic_write_text
from flows.warm_client import (
    FORWARDED,
    SOCKET_NAME,
    connect,
    inside,
    interpreter,
    peer_uid,
    process_attributes,
    receive_message,
    send_message,
)

PID_NAME = "stages.pid"
LOG_NAME = "stages.log"
# held by the runner while it lives: two started at once (two commands each starting the
# project's server) would otherwise both listen, the first on a socket file the second
# replaced, idle for IDLE_EXIT_S
LOCK_NAME = "stages.lock"
IDLE_EXIT_S = 30 * 60
CHECK_EVERY_S = 5.0
PRELOAD = (
    "prefect",
    "prefect.main",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.logging.handlers",
    "fastapi.encoders",  # Prefect's record of a flow run's parameters: 0.2 s a stage
    "requests",
    "numpy",
    "PIL.Image",
    "yaml",
    "cv2",
    "torch",
)
PROJECT_PACKAGES = ("flows", "anime_face_id", "tasks")
CONSOLE_MODULE = "anime_face_id.cli"  # what the console script runs (flows/console.py)
# Variables read when the preloaded libraries are imported (so a fresh interpreter could
# differ), except PREFECT_API_URL: the stage re-reads Prefect's settings, and `make
# pipeline` sets it for DVC alone.
SENSITIVE_PREFIXES = (
    "PREFECT_", "PYTHON", "OMP_", "GOMP_", "MKL_", "OPENBLAS_", "KMP_", "GOTO_", "NUMEXPR_",
    "NPY_", "NUMPY_", "TORCH", "PYTORCH_", "CUDA_", "OPENCV_", "PILLOW_", "PYDANTIC_", "LD_",
    "MALLOC_", "GLIBC_", "LANG", "LC_", "TZ", "HOME", "DO_NOT_TRACK", "TMPDIR",
    "TERM", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "TTY_", "COLUMNS", "LINES",
)  # fmt: skip
PER_CALL = ("PREFECT_API_URL",)


def import_sensitive(env: dict[str, str]) -> dict[str, str]:
    """The part of an environment that decides what importing the preloaded libraries
    does, after the defaults every stage process sets (flows/__init__.py)."""
    from flows import stage_defaults

    env = dict(env)
    stage_defaults(env)
    return {
        name: value
        for name, value in env.items()
        if name.startswith(SENSITIVE_PREFIXES) and name not in PER_CALL
    }


def _project_files() -> list[str]:
    """The project's code this process runs: its packages' modules, and the runner itself
    (run as __main__)."""
    files = []
    for name, module in list(sys.modules.items()):
        ours = name == "__main__" or name.split(".")[0] in PROJECT_PACKAGES
        if ours and getattr(module, "__file__", None):
            files.append(module.__file__)
    return sorted(files)


def fingerprint() -> tuple:
    """What must not change under a running runner: its own code, and the installed
    packages (installing or removing one changes the site-packages folder)."""
    stamps = []
    for path in [*_project_files(), *(p for p in sys.path if p.startswith(sys.prefix))]:
        try:
            stamps.append((path, os.stat(path).st_mtime_ns))
        except OSError:
            stamps.append((path, None))
    return tuple(stamps)


@dataclass(frozen=True)
class Started:
    """What the runner was started with, for each request to be compared against."""

    home: Path
    pid: int
    env: dict[str, str]
    process: dict
    code: tuple


def decline_reason(request: dict, started: Started) -> str:
    """Why this request must run cold, or "" when the runner can take it."""
    if request.get("interpreter") != interpreter():
        return "another interpreter or virtual environment"
    if import_sensitive(request.get("env", {})) != started.env:
        return "an import-time environment variable differs"
    if request.get("process") != started.process:
        return "CPU affinity, priority, groups, cgroup or limits differ"
    if fingerprint() != started.code:
        return "the runner's code or the installed packages changed"
    return ""


def log(home: Path, message: str) -> None:
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}\n"
    with open(home / LOG_NAME, "a") as out:
        out.write(line)


# --- the stage process ---------------------------------------------------------------


def _forget_project_modules() -> None:
    """The stage imports the project's code afresh from its folder: edits since the runner
    started count, as in a new interpreter."""
    for name in list(sys.modules):
        if name.split(".")[0] in PROJECT_PACKAGES:
            del sys.modules[name]
    importlib.invalidate_caches()


def _take_signals(ignored: list[int]) -> None:
    """A fresh interpreter's signal handling, with what the caller ignores ignored."""
    for signum in FORWARDED:
        signal.signal(signum, signal.SIG_IGN if signum in ignored else signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if signal.SIGINT not in ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _become_fresh_process(request: dict, fds: list[int]) -> None:
    os.setpgid(0, 0)
    _take_signals(request["ignored"])
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    # as Python sets them up at start: stdout line by line on a terminal, stderr always
    sys.stdout.reconfigure(line_buffering=os.isatty(1))
    sys.stderr.reconfigure(line_buffering=True)
    _forget_project_modules()
    if request.get("console"):  # as the console script has them
        sys.path[0], sys.argv = request["path0"], [request["argv0"], *request["args"]]
    else:  # as `python -m` has them
        sys.path[0], sys.argv = request["cwd"], ["", *request["args"]]
    import tempfile

    import numpy
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    tempfile.tempdir = None  # TMPDIR is the caller's
    numpy.random.seed()  # not the runner's draw, shared by every process it forks
    importlib.import_module("flows")  # its process defaults, before Prefect reads settings
    refresh_global_settings_context()  # PREFECT_API_URL and any other setting, from env
    if request.get("console"):
        _logging_as_at_start()
    else:
        setup_logging(incremental=False)  # console handlers on this terminal, not the log file


def _logging_as_at_start() -> None:
    """The console script never imports Prefect, whose import gave the root logger its
    handler: a warning is printed bare, by Python's last-resort handler."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def run_stage_here(request: dict, fds: list[int], blocked: set) -> None:
    """In the forked stage process: runs the stage as `python -m flows.<stage>` does, and
    leaves as it would: SystemExit, or an exception shown by Python's top level."""
    import runpy

    _become_fresh_process(request, fds)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # what came meanwhile arrives now
    runpy.run_module(f"flows.{request['stage']}", run_name="__main__", alter_sys=True)
    raise SystemExit(0)


def run_command_here(request: dict, fds: list[int], blocked: set) -> None:
    """In the forked process: runs an `anime-face-id` command as its console script does."""
    _become_fresh_process(request, fds)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    # by name, as runpy finds a stage's module: no stage imports (or depends on) the CLI
    cli = importlib.import_module(CONSOLE_MODULE)
    raise SystemExit(cli.run())


def what(request: dict) -> tuple[str, str]:
    """(kind, name) for the log: ("stage", its name) or ("command", "anime-face-id")."""
    if request.get("console"):
        return "command", "anime-face-id"
    return "stage", str(request.get("stage"))


# --- one request ----------------------------------------------------------------------


def _exit_status(status: int) -> dict:
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return {"exit": os.waitstatus_to_exitcode(status)}


def _watch(connection: socket.socket, pid: int) -> dict:
    """Wait for the stage; a client that goes away (killed) takes the stage with it."""
    pidfd = os.pidfd_open(pid)
    watching = [connection, pidfd]
    while True:
        ready, _, _ = select.select(watching, [], [])
        if pidfd in ready:
            _, status = os.waitpid(pid, 0)
            return _exit_status(status)
        try:
            gone = not connection.recv(64)
        except OSError:  # reset: the client died with a message unread
            gone = True
        if gone:
            watching.remove(connection)
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM)
                os.killpg(pid, signal.SIGCONT)  # a stopped stage (Ctrl-Z) must see it


def _request(connection: socket.socket, started: Started) -> tuple[dict, list[int], str]:
    """The request, its descriptors and why it must run cold ("" when it need not)."""
    connection.settimeout(10)  # a client that connects and sends nothing is let go
    request, fds = receive_message(connection, max_fds=3)
    connection.settimeout(None)
    if peer_uid(connection) != os.getuid():
        return request, fds, "another user"
    if len(fds) != 3:
        return request, fds, "no terminal descriptors"
    return request, fds, decline_reason(request, started)


def handle(connection: socket.socket, started: Started) -> None:
    """In a fork of the runner, per connection: check, fork the stage, report its end.
    The client runs the stage cold only when told so, before anything was forked."""
    me = os.getpid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        try:
            request, fds, why = _request(connection, started)
        except (OSError, EOFError, ValueError):
            return  # a liveness probe, or a client gone
        except Exception as error:  # a bug here must not cost the stage: it runs cold
            request, fds, why = {}, [], f"{type(error).__name__}: {error}"
        if why:
            send_message(connection, {"accepted": False, "why": why})
            log(started.home, f"declined {what(request)[1]}: {why}")
            if "changed" in why and os.getppid() == started.pid:
                os.kill(started.pid, signal.SIGTERM)  # outdated: the next start is afresh
            return
        # from here on the client never runs the stage itself
        send_message(connection, {"accepted": True})
        sys.stdout.flush()
        sys.stderr.flush()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        pid = os.fork()
        if pid == 0:
            connection.close()
            run_here = run_command_here if request.get("console") else run_stage_here
            run_here(request, fds, blocked)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        with contextlib.suppress(OSError):  # the child already has (or has exited)
            os.setpgid(pid, pid)
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):
            send_message(connection, {"pid": pid})
            kind, name = what(request)
            log(started.home, f"{kind} {name} runs as {pid}")
            send_message(connection, _watch(connection, pid))
    finally:
        if os.getpid() == me:  # not the stage, leaving through here
            os._exit(0)


# --- the runner -----------------------------------------------------------------------


def preload() -> None:
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    gc.collect()
    gc.freeze()  # forked stages share these pages instead of copying them when gc runs


def listen(home: Path) -> socket.socket:
    """Bind the socket, owner only."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mask = os.umask(0o077)
    try:
        with inside(home):
            if os.path.exists(SOCKET_NAME):
                os.unlink(SOCKET_NAME)  # a dead runner's: live ones answer, checked before
            listener.bind(SOCKET_NAME)
    finally:
        os.umask(mask)
    listener.listen(16)
    return listener


def _socket_identity(home: Path) -> tuple | None:
    try:
        found = (home / SOCKET_NAME).stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino, found.st_ctime_ns


def _same_socket(home: Path, identity: tuple) -> bool:
    return _socket_identity(home) == identity


def _process_status(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat from the state on (the name before them may hold
    spaces), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()


def _started_at(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): with the pid, it names one
    process, not whichever later reuses the number."""
    fields = _process_status(pid)
    return fields[19] if fields else None


def _pid_line(pid: int) -> str:
    return f"{pid} {_started_at(pid)}\n"


def _can_watch_processes() -> bool:
    """pidfd_open (Linux 5.3) may be missing, or refused by a container's seccomp."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


def _only_runner(home: Path) -> int | None:
    """The lock's descriptor, held until this process ends; None when another runner holds
    it (starting or serving)."""
    descriptor = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def serve(root: Path) -> None:
    home = root.resolve() / ".prefect"
    me = os.getpid()
    home.mkdir(parents=True, exist_ok=True)
    lock = _only_runner(home)
    if lock is None:
        log(home, "not started: another runner is starting or serving")
        return
    # before the imports (seconds): a stop meanwhile finds it; again once it listens, as
    # a runner started at the same moment may have written its own and lost the socket
    atomic_write_text(home / PID_NAME, _pid_line(me))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if not _can_watch_processes():
        log(home, "not started: this system cannot watch processes (pidfd_open)")
        return
    home.chmod(0o700)  # the socket hands out the caller's terminal and environment
    env, process = import_sensitive(dict(os.environ)), process_attributes()
    preload()  # after reading what it could change (an OpenMP runtime pins threads, say)
    started = Started(home, me, env, process, fingerprint())
    listener = listen(home)
    ours = _socket_identity(home)
    atomic_write_text(home / PID_NAME, _pid_line(me))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the system
    log(home, f"ready (preloaded {', '.join(PRELOAD)})")
    last_used = time.monotonic()
    try:
        while _same_socket(home, ours):  # else another runner took over
            ready, _, _ = select.select([listener], [], [], CHECK_EVERY_S)
            if ready:
                connection, _ = listener.accept()
                last_used = time.monotonic()
                if os.fork() == 0:
                    listener.close()
                    os.close(lock)  # a stage outliving the runner must not hold it
                    handle(connection, started)
                connection.close()
            elif time.monotonic() - last_used > IDLE_EXIT_S:
                break
    finally:
        if os.getpid() == me:  # not in a stage leaving through here
            listener.close()
            if _same_socket(home, ours):
                (home / SOCKET_NAME).unlink(missing_ok=True)
                (home / PID_NAME).unlink(missing_ok=True)
            log(home, "stopped")


# --- starting and stopping it ---------------------------------------------------------


def is_running(root: Path) -> bool:
    connection = connect(str(root / ".prefect"))
    if connection is None:
        return False
    connection.close()
    return True


def start(root: Path) -> None:
    """Start the runner for the project at ``root`` in the background unless one answers;
    it takes a few seconds to be ready, and stages run cold until then."""
    home = root / ".prefect"
    if os.environ.get("ANIME_FACE_ID_WARM") == "0" or not hasattr(os, "pidfd_open"):
        return
    if is_running(root):
        return
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOG_NAME, "a") as errors:
        subprocess.Popen(
            [sys.executable, "-m", "flows.warm", "--root", str(root.resolve())],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
        )


def _runner_pid(home: Path) -> int | None:
    try:
        pid, started_at = (home / PID_NAME).read_text().split()
    except (OSError, ValueError):
        return None
    return int(pid) if pid.isdigit() and _started_at(int(pid)) == started_at else None


def stop(root: Path, wait_s: float = 10.0) -> bool:
    """Stop the project's runner; stages it already started run to their end."""
    home = root / ".prefect"
    pid = _runner_pid(home)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + wait_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    """Running (an exited runner not yet reaped by its parent counts as gone)."""
    fields = _process_status(pid)
    return fields is not None and fields[0] != "Z"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.warm", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--root", type=Path, default=Path("."), help="project root")
    args = parser.parse_args(argv)
    serve(args.root)


if __name__ == "__main__":
    main()
