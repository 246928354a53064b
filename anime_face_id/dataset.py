"""From the split and balance tables to (image tensor, label) pairs for training.

Labels are indices into the sorted list of character names, so the same characters always
get the same labels whatever order the tables list them in.

Augmentation is reproducible whatever the number of DataLoader workers: each draw of a
row gets its own random generator, seeded by (seed, epoch, step, position in the batch),
instead of sharing a generator whose state would depend on which worker loaded what.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from anime_face_id import layout
from anime_face_id.errors import StageError
from anime_face_id.imaging import ImageRejected, load_rgb
from anime_face_id.transforms import DEFAULT_AUGMENT, AugmentSettings, augment, preprocess

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    path: str  # POSIX, relative to the project root
    character: str
    label: int
    augment: bool


class Draw(NamedTuple):
    """One sampled row of one batch: the key the dataset seeds its augmentation with."""

    row: int
    epoch: int
    step: int
    position: int


def class_names_of(rows: Sequence[dict[str, str]]) -> list[str]:
    """Sorted character names: label i is class_names[i], stable across runs."""
    return sorted({row["character"] for row in rows})


def examples_from_rows(rows: Sequence[dict[str, str]], class_names: Sequence[str]) -> list[Example]:
    """Rows of characters outside ``class_names`` are left out (they have no label)."""
    label_of = {name: index for index, name in enumerate(class_names)}
    return [
        Example(
            path=row["path"],
            character=row["character"],
            label=label_of[row["character"]],
            augment=str(row.get("augment", "0")).strip() == "1",
        )
        for row in rows
        if row["character"] in label_of
    ]


def read_balanced_train(root: Path) -> list[dict[str, str]]:
    return _read_image_table(root, layout.BALANCED_TRAIN, layout.BALANCED_COLUMNS, "balance")


def read_split(root: Path, name: str, required: bool = True) -> list[dict[str, str]]:
    """Rows of data/splits/<name>.csv; an absent optional split (holdout) has none."""
    path = Path(root) / layout.split_csv(name)
    if not required and not path.is_file():
        return []
    return _read_image_table(root, layout.split_csv(name), layout.SPLIT_COLUMNS, "split")


def _read_image_table(
    root: Path, table: Path, columns: tuple[str, ...], produced_by: str
) -> list[dict[str, str]]:
    """A table whose ``path`` column names images to open: a path that could lead out of
    data/ is a StageError naming the table, line and column."""
    rows = layout.read_table(root, table, columns, produced_by)
    layout.check_rows(table, rows, {"path": lambda path: layout.project_path(root, path)})
    return rows


def unreadable_images(root: Path, paths: Sequence[str]) -> dict[str, str]:
    """{path: reason} for the distinct paths that are missing or do not decode.

    Checked once up front so that a bad file is reported with its reason and left out,
    rather than stopping the run half-way through an epoch."""
    problems: dict[str, str] = {}
    for path in dict.fromkeys(paths):
        try:
            load_rgb(Path(root) / path)
        except ImageRejected as error:
            problems[path] = error.reason
        except OSError as error:
            problems[path] = f"unreadable: {error.strerror or error}"
    for path, reason in problems.items():
        logger.warning("left out %s: %s", path, reason)
    return problems


def without_paths(rows: Sequence[dict[str, str]], excluded: dict[str, str]) -> list[dict[str, str]]:
    return [row for row in rows if row["path"] not in excluded]


def require_paths_inside(rows: Sequence[dict[str, str]], source: str, root: Path) -> None:
    """Paths in the tables must stay inside the project: they are joined to the root.
    Symbolic links are followed too, and the paths must lie under data/."""
    for row in rows:
        try:
            layout.project_path(root, row["path"])
        except layout.UnsafeValue as error:
            raise StageError(f"{source}: {error}") from None


class FaceDataset(Dataset):
    """``dataset[i]`` or ``dataset[Draw(...)]`` -> (float tensor (3, S, S), label).

    An example is augmented when its row says so (balance's augment=1) or when
    ``augment_all`` is set; a plain int index is never augmented (evaluation)."""

    def __init__(
        self,
        root: Path,
        examples: Sequence[Example],
        image_size: int,
        seed: int = 0,
        augment_all: bool = False,
        augment_settings: AugmentSettings = DEFAULT_AUGMENT,
    ):
        self.root = Path(root)
        self.examples = list(examples)
        self.image_size = image_size
        self.seed = seed
        self.augment_all = augment_all
        self.augment_settings = augment_settings

    def __len__(self) -> int:
        return len(self.examples)

    def will_augment(self, row: int) -> bool:
        return self.augment_all or self.examples[row].augment

    def __getitem__(self, key: int | Draw) -> tuple[torch.Tensor, int]:
        draw = key if isinstance(key, Draw) else None
        row = draw.row if draw else int(key)
        example = self.examples[row]
        rgb = load_rgb(self.root / example.path)
        if draw is not None and self.will_augment(row):
            rng = np.random.default_rng([self.seed, draw.epoch, draw.step, draw.position, row])
            return augment(rgb, rng, self.image_size, self.augment_settings), example.label
        return preprocess(rgb, self.image_size), example.label


class NumberedBatches(Sampler[list[Draw]]):
    """Turns a batch sampler's row indices into ``Draw`` keys for ``FaceDataset``."""

    def __init__(self, batches: Sampler[list[int]], epoch: int = 0):
        self.batches = batches
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[Draw]]:
        for step, batch in enumerate(self.batches):
            yield [Draw(row, self.epoch, step, position) for position, row in enumerate(batch)]
