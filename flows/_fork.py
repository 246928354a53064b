"""Forked children of a process that ran a flow must not drain the parent's Prefect services.

Prefect starts queue services (API logs, events) at a flow's first log line and registers
each one's drain to run when the interpreter's threads shut down. A forked child, such as a
DataLoader worker with `train.workers` above 0 or any `multiprocessing` fork, inherits that
list. Prefect's own after-fork hook empties the services but leaves their drains
registered, so each child's exit fails an assertion in the drain, and the child exits with
code 1 after finishing its work, with nothing printed (Prefect 3.8). The DataLoader then
fails the epoch ("worker exited unexpectedly").

The child never started those services, so it forgets their drains right after the fork.
"""

from __future__ import annotations

import os
import sys
import threading

_SERVICES = "prefect._internal.concurrency.services"


def is_service_drain(call: object) -> bool:
    """Whether an entry of threading's exit list drains one of Prefect's queue services."""
    services = sys.modules.get(_SERVICES)
    if services is None:
        return False
    owner = getattr(getattr(call, "func", call), "__self__", None)
    return isinstance(owner, services._QueueServiceBase)


def forget_inherited_service_drains() -> None:
    # private to Python's threading; if a later Python renames it there is nothing to forget
    exits = getattr(threading, "_threading_atexits", None)
    if isinstance(exits, list):
        exits[:] = [call for call in exits if not is_service_drain(call)]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=forget_inherited_service_drains)
