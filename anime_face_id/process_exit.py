"""Leaving a command-line process without Python's last garbage collection.

At exit Python collects every object still alive: after importing Prefect (and torch) that
pass alone took 0.4-1 s per process, paid by each DVC stage and each `anime-face-id`
command. Nothing a run needs happens there: files are written and closed by their own code,
atexit handlers (Prefect sending its last logs, MLflow) still run, and objects still go
away when their last reference does. Only the entry points call this, never library code:
a frozen object caught in a reference cycle is never freed, which would matter in a
long-lived process such as the test suite."""

from __future__ import annotations

import gc


def skip_final_collection() -> None:
    """Call as the process is about to exit: what is alive now is left out of the last
    collection."""
    gc.freeze()
