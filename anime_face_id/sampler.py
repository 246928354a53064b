"""P x K batch sampler for batch-hard triplet training.

Every batch holds P classes with K items each, and every class in a batch contributes at
least two distinct images, so each anchor has a real positive (a copy of the anchor
itself is no positive). ``image_ids`` tells which dataset rows are the same picture: the
balanced training index repeats rows to oversample small classes, and two repeats of one
file must not count as two images.

Classes are taken from a shuffled cycle, so an epoch of at least ceil(C / P) batches
covers every class; within a class, K distinct images are drawn when it has K, otherwise
all of them plus repeats. Order depends only on (seed, epoch): call ``set_epoch`` as with
``DistributedSampler``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


class PKSampler(Sampler[list[int]]):
    def __init__(
        self,
        labels: Sequence[Hashable],
        p: int,
        k: int,
        seed: int,
        batches_per_epoch: int | None = None,
        image_ids: Sequence[Hashable] | None = None,
    ):
        if k < 2:
            raise ValueError(f"k must be at least 2 (an anchor needs a positive), got {k}")
        if p < 2:
            raise ValueError(f"p must be at least 2 (an anchor needs a negative), got {p}")
        if image_ids is not None and len(image_ids) != len(labels):
            raise ValueError(f"image_ids has {len(image_ids)} entries but labels has {len(labels)}")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be at least 1, got {batches_per_epoch}")
        self.k = k
        self.seed = seed
        self.epoch = 0
        self.warnings: list[str] = []
        # class -> list of images, each image the list of dataset rows that hold it
        self.classes, self.excluded_classes = _usable_classes(labels, image_ids)
        if self.excluded_classes:
            self._warn(
                f"{len(self.excluded_classes)} class(es) with a single distinct image left out of "
                f"triplet batches (no positive possible): {', '.join(map(str, self.excluded_classes))}"
            )
        if len(self.classes) < 2:
            single = ", ".join(map(str, self.excluded_classes))
            raise ValueError(
                f"P x K batches need at least 2 classes with 2 or more distinct images each; "
                f"found {len(self.classes)}" + (f" (a single one: {single})" if single else "")
            )
        self.p = min(p, len(self.classes))
        if self.p < p:
            self._warn(f"p reduced from {p} to {self.p}: only {len(self.classes)} usable classes")
        usable_images = sum(len(images) for images in self.classes.values())
        self.batches_per_epoch = batches_per_epoch or max(
            math.ceil(len(self.classes) / self.p), usable_images // (self.p * self.k)
        )

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        logger.warning(message)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        names = list(self.classes)
        class_cycle = _ClassCycle(len(names), rng)
        for _ in range(self.batches_per_epoch):
            batch: list[int] = []
            for class_index in class_cycle.take(self.p):
                batch.extend(_draw_class(self.classes[names[class_index]], self.k, rng))
            yield batch


def _usable_classes(
    labels: Sequence[Hashable], image_ids: Sequence[Hashable] | None
) -> tuple[dict[Hashable, list[list[int]]], list[Hashable]]:
    rows_by_image: dict[Hashable, dict[Hashable, list[int]]] = {}
    for row, label in enumerate(labels):
        image = row if image_ids is None else image_ids[row]
        rows_by_image.setdefault(label, {}).setdefault(image, []).append(row)
    usable, excluded = {}, []
    for label, images in rows_by_image.items():
        if len(images) >= 2:
            usable[label] = list(images.values())
        else:
            excluded.append(label)
    return usable, excluded


class _ClassCycle:
    """Shuffled passes over the classes; a batch never holds a class twice, even where
    one pass ends and the next begins."""

    def __init__(self, count: int, rng: np.random.Generator):
        self.count = count
        self.rng = rng
        self.queue: list[int] = []

    def take(self, p: int) -> list[int]:
        chosen = self.queue[:p]
        self.queue = self.queue[p:]
        while len(chosen) < p:
            fresh = [int(c) for c in self.rng.permutation(self.count) if c not in chosen]
            needed = p - len(chosen)
            chosen += fresh[:needed]
            self.queue = fresh[needed:]
        return chosen


def _draw_class(images: list[list[int]], k: int, rng: np.random.Generator) -> list[int]:
    """K rows of one class: K distinct images when it has that many, else every image
    once and the remainder repeated, so at least two distinct images always appear."""
    order = rng.permutation(len(images))
    if len(images) >= k:
        picks = order[:k]
    else:
        picks = np.concatenate([order, rng.choice(len(images), size=k - len(images))])
    return [int(rng.choice(images[i])) for i in picks]
