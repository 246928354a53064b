"""The callers' side of the warm stage runner (flows/warm.py): hand a stage (flows/run) or
an `anime-face-id` command (flows/console.py) to the runner, pass on the signals this
process gets, and exit as the forked process did; whenever the runner is absent or
declines, the caller runs it cold: the stage as `python -m flows.<stage>`, the command in
its own process.

Run as `python -I flows/warm_client.py <socket folder> <stage> [flow options]`: the
standard library only, so that it starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys

SOCKET_NAME = "stages.sock"
FORWARDED = (
    signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP, signal.SIGCONT,
)  # fmt: skip
ENDING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# The runner answers in milliseconds; past this the caller runs cold (and the runner,
# finding the connection closed, starts nothing or ends what it started).
ANSWER_WITHIN_S = 30.0
_HEADER = struct.Struct(">I")


def send_message(connection: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    body = json.dumps(message).encode()
    header = _HEADER.pack(len(body))
    if fds:
        socket.send_fds(connection, [header], fds)
    else:
        connection.sendall(header)
    connection.sendall(body)


def _exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise EOFError("the other side closed the connection")
        data += chunk
    return data


def receive_message(connection: socket.socket, max_fds: int = 0) -> tuple[dict, list[int]]:
    """One message, with the descriptors that came with it (at most ``max_fds``)."""
    if max_fds:
        header, fds, _, _ = socket.recv_fds(connection, _HEADER.size, max_fds)
        if len(header) < _HEADER.size:
            header += _exactly(connection, _HEADER.size - len(header))
    else:
        header, fds = _exactly(connection, _HEADER.size), []
    if not header:
        raise EOFError("the other side closed the connection")
    (size,) = _HEADER.unpack(header)
    return json.loads(_exactly(connection, size)), list(fds)


@contextlib.contextmanager
def inside(folder: str | os.PathLike):
    """Work from ``folder`` for a while: the socket is named from inside its folder, as a
    Unix socket's path is limited to ~107 bytes."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def peer_uid(connection: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket."""
    credentials = connection.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII")
    )
    return struct.unpack("iII", credentials)[1]


def connect(folder: str) -> socket.socket | None:
    """A connection to the runner listening in ``folder``, or None. A socket another user
    listens on is not ours: it would get this process's environment and terminal."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with inside(folder):
            connection.connect(SOCKET_NAME)
        if peer_uid(connection) != os.getuid():
            raise PermissionError("the runner's socket belongs to another user")
    except OSError:
        connection.close()
        return None
    return connection


def interpreter() -> dict[str, str]:
    """What identifies this interpreter and its packages, for the runner to compare."""
    return {"prefix": os.path.realpath(sys.prefix), "version": sys.version}


def process_attributes() -> dict:
    """What a process inherits besides its environment and that libraries read as they load
    (thread counts from the CPU affinity) or that bounds it (limits, groups, cgroup): a
    stage forked by the runner has the runner's, so they must be the caller's too."""
    import resource

    limits = ("AS", "DATA", "NOFILE", "NPROC", "STACK", "CORE", "CPU", "RSS", "MEMLOCK", "FSIZE")
    try:
        with open("/proc/self/cgroup") as cgroup:
            placement = cgroup.read()
    except OSError:
        placement = ""
    return {
        "affinity": sorted(os.sched_getaffinity(0)),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "gid": os.getgid(),
        "groups": sorted(os.getgroups()),
        "cgroup": placement,
        "limits": {
            name: list(resource.getrlimit(getattr(resource, f"RLIMIT_{name}")))
            for name in limits
            if hasattr(resource, f"RLIMIT_{name}")
        },
    }


def request(target: dict, args: list[str], ignored: list[int]) -> dict:
    """``target``: {"stage": name}, or {"console": True, "argv0": ..., "path0": ...} for
    the console script (its sys.argv[0] and sys.path[0])."""
    mask = os.umask(0)
    os.umask(mask)
    return {
        **target,
        "args": args,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "umask": mask,
        "ignored": ignored,
        "interpreter": interpreter(),
        "process": process_attributes(),
    }


class _Forwarder:
    """Passes the signals this process gets to the stage's process group (Ctrl-C reaches
    flows/run, not the runner's child); a signal that arrives before the stage's pid is
    known waits for it. Ctrl-Z stops the stage, then this process; `fg` continues both."""

    def __init__(self, stops: bool) -> None:
        self.pid: int | None = None
        self.pending: list[int] = []
        self.stops = stops  # Ctrl-Z stops this process too (unless the caller ignores it)

    def __call__(self, signum: int, _frame) -> None:
        if self.pid is None:
            self.pending.append(signum)
        else:
            self.send(signum)

    def send(self, signum: int) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signum)
        if (
            signum == signal.SIGTSTP and self.stops
        ):  # stop as a cold stage would (the shell sees it) ...
            signal.signal(signal.SIGTSTP, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTSTP)
            signal.signal(signal.SIGTSTP, self)
            with contextlib.suppress(OSError):  # ... and once continued, so is the stage
                os.killpg(self.pid, signal.SIGCONT)

    def started(self, pid: int) -> None:
        self.pid = pid
        for signum in self.pending:
            self.send(signum)


def exit_as(result: dict) -> None:
    """Exit with the stage's status, or die of the signal that ended it."""
    signum = result.get("signal")
    if signum:
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's action cannot be set
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        sys.exit(128 + signum)
    sys.exit(result.get("exit", 1))


def _std_streams_open() -> bool:
    """With 0, 1 or 2 closed the socket could take its number and be handed over as one."""
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:
        return False
    return True


def hand_over(folder: str, target: dict, args: list[str], what: str) -> None:
    """Have the runner listening in ``folder`` run ``target`` (see ``request``) and exit as
    it ended. Returns, with this process's signal handling as it was, when the runner is
    absent or declines: the caller then runs ``what`` itself."""
    off = os.environ.get("ANIME_FACE_ID_WARM") == "0" or not _std_streams_open()
    connection = None if off else connect(folder)
    if connection is None:
        return
    # A signal the caller ignores (`nohup`) starts ignored in the forked process too; it is
    # passed on all the same, as a cold one would get it, and may have set its own handler.
    previous = {signum: signal.getsignal(signum) for signum in FORWARDED}
    ignored = [s for s in FORWARDED if previous[s] == signal.SIG_IGN]
    forwarder = _Forwarder(stops=signal.SIGTSTP not in ignored)
    for signum in FORWARDED:
        signal.signal(signum, forwarder)
    try:
        connection.settimeout(ANSWER_WITHIN_S)  # a runner that hangs is not waited for
        send_message(connection, request(target, args, ignored), [0, 1, 2])
        answer, _ = receive_message(connection)
        connection.settimeout(None)
    except (OSError, EOFError, ValueError):
        answer = {"accepted": False}  # the runner started nothing: it answers that first
    if not answer.get("accepted"):
        connection.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in forwarder.pending:  # Ctrl-C before anything started: stop here
            if signum in ENDING and signum not in ignored:
                exit_as({"signal": signum})
        return
    try:
        started, _ = receive_message(connection)
        forwarder.started(started["pid"])
        result, _ = receive_message(connection)
    except (OSError, EOFError, ValueError, KeyError):
        if forwarder.pid is not None:
            forwarder.send(signal.SIGTERM)
        print(f"the warm stage runner failed while {what} ran", file=sys.stderr)
        sys.exit(1)
    exit_as(result)


def main(argv: list[str]) -> None:
    folder, stage, *args = argv
    hand_over(folder, {"stage": stage}, args, f"flows/run {stage}")
    os.execv(sys.executable, [sys.executable, "-m", f"flows.{stage}", *args])


if __name__ == "__main__":
    main(sys.argv[1:])
