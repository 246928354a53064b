"""Training views drawn in worker processes, each from a seed of its own.

A view takes about 10 ms of one core to draw (decode, scale, paste, jitter). On a CPU the
training step dwarfs that; on a GPU the card would wait for the views most of the time, so
``workers`` processes draw them ahead. Each view gets its seed from the run's generator, in
the order the main process asks, so the views (and the trained weights, up to the
device's arithmetic) are the same for any number of workers.

Ctrl-C in a terminal reaches every process of its group. The workers are started with it
blocked, so they never see it: the training process alone stops, and stops them. A worker
that dies anyway (killed, out of memory) ends the run with an error that says so, never
with a run waiting for a batch no one will draw.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

import numpy as np
import torch

from anime_face_id.errors import StageError
from anime_face_id.faces.detector_data import (
    FaceCrop,
    LabelledImage,
    ViewSettings,
    training_view,
)
from anime_face_id.transforms import normalise

SEED_BOUND = 2**63  # exclusive upper bound of a view's seed


Sample = tuple[np.ndarray, dict[str, np.ndarray]]

# What each worker process draws from, set once when it starts (spawned, so nothing of
# the parent's torch threads or GPU state is forked into it).
_WORKER: dict = {}


def _start_worker(
    items: list[LabelledImage], crops: list[FaceCrop], settings: ViewSettings, parent: int
):
    torch.set_num_threads(1)
    _WORKER.update(items=items, crops=crops, settings=settings)
    threading.Thread(target=_leave_with, args=(parent,), daemon=True).start()


def _leave_with(parent: int) -> None:
    """End this worker once the training process is gone. A training process that leaves
    hard (a second Ctrl-C, or its grace period running out) cannot stop its workers, and
    a worker, deaf to Ctrl-C and holding both ends of its queues, would wait forever."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def seeded_view(
    items: Sequence[LabelledImage],
    crops: list[FaceCrop],
    settings: ViewSettings,
    index: int,
    seed: int,
) -> Sample:
    """Frame ``index``'s view (uint8, as ``training_view``) drawn from its own generator:
    the same wherever it is drawn."""
    return training_view(items[index], crops, np.random.default_rng(seed), settings)


def _draw_batch(tasks: list[tuple[int, int]]) -> list[Sample]:
    items, crops, settings = _WORKER["items"], _WORKER["crops"], _WORKER["settings"]
    return [seeded_view(items, crops, settings, index, seed) for index, seed in tasks]


@contextmanager
def _ctrl_c_blocked() -> Iterator[None]:
    """Hold back Ctrl-C in this thread for the block: a process started in it inherits
    the mask, so is deaf to Ctrl-C from its first instruction (setting it in the worker
    would leave the seconds of its start-up, importing torch, exposed). The process as a
    whole still takes Ctrl-C, through its other threads."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


class ViewPool:
    """``workers`` processes that draw batches of seeded views, a few batches ahead."""

    def __init__(
        self,
        workers: int,
        items: list[LabelledImage],
        crops: list[FaceCrop],
        settings: ViewSettings,
    ) -> None:
        self._executor = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(items, crops, settings, os.getpid()),
        )
        self._ahead = 2 * workers  # batches in flight: enough to keep every worker busy

    def _submit(self, batch: list[tuple[int, int]]) -> Future:
        with _ctrl_c_blocked():  # the executor starts its workers on demand, in submit
            return self._executor.submit(_draw_batch, batch)

    def batches(self, tasks: Sequence[list[tuple[int, int]]]) -> Iterator[list[Sample]]:
        """Each batch of ``(frame index, seed)`` drawn, in order, and normalised here as
        ``training_sample`` normalises: the workers send uint8 views, a quarter of the
        bytes, since the pipe, not the drawing, limited them."""
        upcoming = iter(tasks)
        pending: deque[Future] = deque()

        def submit() -> None:
            batch = next(upcoming, None)
            if batch is not None:
                pending.append(self._submit(batch))

        try:
            for _ in range(self._ahead):
                submit()
            while pending:
                drawn = pending.popleft().result()
                submit()
                yield [(normalise(view).numpy(), targets) for view, targets in drawn]
        except BrokenProcessPool as error:
            raise StageError(
                "a process drawing the training views died (killed, or out of memory?): "
                "run the same command again to continue from the last finished epoch, "
                "with fewer --workers if memory ran out"
            ) from error
        finally:  # batches of an epoch cut short are not drawn for nothing
            for future in pending:
                future.cancel()

    def close(self) -> None:
        """Stop the workers: batches already handed to a worker are finished (about two
        batches' time), the rest are dropped."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ViewPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
