"""Stopping a run within seconds on Ctrl-C, with nothing half-written.

A stage's entry point installs ``stop_on_ctrl_c``. The first Ctrl-C marks the run as
stopping: downloads in flight are cut at once (``on_stop`` hooks), work not yet started
raises ``Interrupted`` before it begins, and the main thread gets KeyboardInterrupt as
usual. Nothing an interruption touches is recorded as that item's failure, so the next
run simply does it. A second Ctrl-C leaves at once, and so does the process when it has
not ended ``GRACE_S`` after the first: Ctrl-C also stops the temporary Prefect server a
stage starts, and Prefect would otherwise retry reporting the crash to it for minutes.
Leaving hard is safe by design: every file is written atomically and the journals repair a
torn last line (interrupted runs, even ``kill -9``, resume).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

GRACE_S = 5.0
_stopping = threading.Event()
_hooks: dict[int, Callable[[], None]] = {}
_hooks_lock = threading.Lock()


class Interrupted(BaseException):
    """The run is stopping. A BaseException, like KeyboardInterrupt, so that no handler
    meant for an item's own failures (``except Exception``) records it as one."""


def stop_requested() -> bool:
    return _stopping.is_set()


def raise_if_stopping() -> None:
    if _stopping.is_set():
        raise Interrupted("the run is stopping")


def request_stop() -> None:
    """Mark the run as stopping and call every ``on_stop`` hook (from any thread)."""
    _stopping.set()
    with _hooks_lock:
        hooks = list(_hooks.values())
    for hook in hooks:
        hook()


def reset() -> None:
    """Forget a stop (tests; a long-lived process that starts a new run)."""
    _stopping.clear()


@contextmanager
def on_stop(hook: Callable[[], None]) -> Iterator[None]:
    """Call ``hook`` if the run is asked to stop while the block runs (at once if it
    already was)."""
    key = id(hook)
    with _hooks_lock:
        _hooks[key] = hook
    try:
        if _stopping.is_set():
            hook()
        yield
    finally:
        with _hooks_lock:
            _hooks.pop(key, None)


def _on_sigint(signum: int, frame: object) -> None:
    if _stopping.is_set():
        print("\nstopped", file=sys.stderr, flush=True)
        os._exit(128 + signum)
    print(
        "\nstopping: work in flight is cut, nothing half-written is kept "
        "(Ctrl-C again to leave at once)",
        file=sys.stderr,
        flush=True,
    )
    request_stop()
    threading.Thread(target=_leave_after, args=(GRACE_S, 128 + signum), daemon=True).start()
    raise KeyboardInterrupt


def _leave_after(seconds: float, status: int) -> None:
    threading.Event().wait(seconds)
    print("stopped", file=sys.stderr, flush=True)
    os._exit(status)


def stop_on_ctrl_c() -> None:
    """Install the Ctrl-C handler (main thread only, as Python requires)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)
