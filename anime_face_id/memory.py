"""Keeping a process's memory bounded while it decodes pictures it did not choose.

A small file can decode to hundreds of megabytes (a flat 16-bit PNG of 6000 x 6000
pixels is 80 KB). Each decode is bounded on its own (``imaging.decode_cost``); this
module bounds what concurrent decodes take together, and hands freed memory back to
the system so that a long-running server returns to its baseline after a burst.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Concurrent decodes in one process share this many bytes; more wait their turn.
DEFAULT_PROCESS_DECODE_BYTES = 1024 * 2**20


class MemoryBudget:
    """A pool of bytes that concurrent users reserve from and give back.

    A reservation larger than the whole pool is still granted when nothing else holds
    any (each decode is already bounded on its own), so nothing waits for ever.
    """

    def __init__(self, total: int):
        self.total = total
        self.in_use = 0
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        with self._changed:
            while self.in_use and self.in_use + size > self.total:
                self._changed.wait()
            self.in_use += size
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= size
                self._changed.notify_all()


DECODE_BUDGET = MemoryBudget(DEFAULT_PROCESS_DECODE_BYTES)


def _load_malloc_trim():
    """glibc's malloc_trim, or None elsewhere (musl, macOS): then this is a no-op."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_malloc_trim()


def release_freed_memory() -> None:
    """Return freed heap pages to the system.

    Pillow allocates large images in 16 MB blocks from the heap, and glibc keeps freed
    heap memory for reuse: without this a server that decoded three large pictures at
    once stays at that peak for the rest of its life.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
