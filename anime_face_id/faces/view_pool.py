"""Training views drawn in worker processes, each from a seed of its own.

A view takes about 10 ms of one core to draw (decode, scale, paste, jitter). On a CPU the
training step dwarfs that; on a GPU the card would wait for the views most of the time, so
``workers`` processes draw them ahead. Each view gets its seed from the run's generator, in
the order the main process asks, so the views (and the trained weights, up to the
device's arithmetic) are the same for any number of workers.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from anime_face_id.faces.detector_data import FaceCrop, LabelledImage, training_view
from anime_face_id.transforms import normalise

SEED_BOUND = 2**63  # exclusive upper bound of a view's seed


@dataclass(frozen=True)
class ViewSettings:
    size: int
    paste_probability: float
    close_up_probability: float
    stride: int


Sample = tuple[np.ndarray, dict[str, np.ndarray]]

# What each worker process draws from, set once when it starts (spawned, so nothing of
# the parent's torch threads or GPU state is forked into it).
_WORKER: dict = {}


def _start_worker(items: list[LabelledImage], crops: list[FaceCrop], settings: ViewSettings):
    torch.set_num_threads(1)
    _WORKER.update(items=items, crops=crops, settings=settings)


def seeded_view(
    items: Sequence[LabelledImage],
    crops: list[FaceCrop],
    settings: ViewSettings,
    index: int,
    seed: int,
) -> Sample:
    """Frame ``index``'s view (uint8, as ``training_view``) drawn from its own generator:
    the same wherever it is drawn."""
    return training_view(
        items[index],
        crops,
        np.random.default_rng(seed),
        settings.size,
        settings.paste_probability,
        settings.close_up_probability,
        settings.stride,
    )


def _draw(task: tuple[int, int]) -> Sample:
    index, seed = task
    return seeded_view(_WORKER["items"], _WORKER["crops"], _WORKER["settings"], index, seed)


class ViewPool:
    """``workers`` processes that draw batches of seeded views, a few batches ahead."""

    def __init__(
        self,
        workers: int,
        items: list[LabelledImage],
        crops: list[FaceCrop],
        settings: ViewSettings,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._pool = context.Pool(workers, _start_worker, (items, crops, settings))
        self._ahead = 2 * workers  # batches in flight: enough to keep every worker busy

    def batches(self, tasks: Sequence[list[tuple[int, int]]]) -> Iterator[list[Sample]]:
        """Each batch of ``(frame index, seed)`` drawn, in order, and normalised here as
        ``training_sample`` normalises: the workers send uint8 views, a quarter of the
        bytes, since the pipe, not the drawing, limited them."""
        upcoming = iter(tasks)
        pending: deque = deque()

        def submit() -> None:
            batch = next(upcoming, None)
            if batch is not None:
                pending.append(self._pool.map_async(_draw, batch, chunksize=1))

        for _ in range(self._ahead):
            submit()
        while pending:
            drawn = pending.popleft().get()
            submit()
            yield [(normalise(view).numpy(), targets) for view, targets in drawn]

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()

    def __enter__(self) -> ViewPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
