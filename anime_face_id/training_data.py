"""What training reads: the balanced training rows as an augmented dataset, the validation
rows, and the retrieval score on them after each epoch. Unreadable images are left out and
reported."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from anime_face_id.config import TrainConfig
from anime_face_id.dataset import (
    Draw,
    FaceDataset,
    class_names_of,
    examples_from_rows,
    read_balanced_train,
    read_split,
    require_paths_inside,
    unreadable_images,
    without_paths,
)
from anime_face_id.embed import embed_paths
from anime_face_id.errors import StageError
from anime_face_id.metrics import retrieval_metrics
from anime_face_id.transforms import DEFAULT_AUGMENT


class NumberedPictures(Dataset):
    """``FaceDataset`` for training: each draw also says which picture (file) it is a view
    of, by number, so the batch's repeats of one file are known as one picture."""

    def __init__(self, faces: FaceDataset):
        self.faces = faces
        numbers: dict[str, int] = {}
        self.pictures = [numbers.setdefault(e.path, len(numbers)) for e in faces.examples]

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, draw: Draw) -> tuple[torch.Tensor, int, int]:
        return (*self.faces[draw], self.pictures[draw.row])


@dataclass
class TrainingData:
    train: FaceDataset
    image_ids: list[str]  # per training row: the file, so repeats are one image
    val_paths: list[str]
    val_labels: list[str]
    class_names: list[str]
    skipped_images: dict[str, str]


def load_training_data(root: Path, config: TrainConfig) -> TrainingData:
    """The balanced training rows and the validation rows, unreadable images left out."""
    train_rows = read_balanced_train(root)
    val_rows = read_split(root, "val")
    require_paths_inside(train_rows, "data/balanced/train.csv", root)
    require_paths_inside(val_rows, "data/splits/val.csv", root)
    skipped = unreadable_images(root, [row["path"] for row in train_rows + val_rows])
    train_rows = without_paths(train_rows, skipped)
    val_rows = without_paths(val_rows, skipped)
    class_names = class_names_of(train_rows)
    if len(class_names) < 2:
        raise StageError(
            f"training needs at least 2 characters with readable images in "
            f"data/balanced/train.csv; found {len(class_names)}. Add characters or images."
        )
    examples = examples_from_rows(train_rows, class_names)
    settings = replace(
        DEFAULT_AUGMENT,
        erase_probability=config.random_erasing,
        downscale_probability=config.downscale,
        style_probability=config.drawing_style,
        style_keeps_hue=config.drawing_style_keeps_hue,
    )
    dataset = FaceDataset(root, examples, config.image_size, config.seed, config.augment, settings)
    return TrainingData(
        train=dataset,
        image_ids=[example.path for example in examples],
        val_paths=[row["path"] for row in val_rows],
        val_labels=[row["character"] for row in val_rows],
        class_names=class_names,
        skipped_images=skipped,
    )


def validate(
    model: torch.nn.Module, data: TrainingData, root: Path, config: TrainConfig, device
) -> dict[str, float]:
    """Retrieval within the validation split: every image queries all the others."""
    if not data.val_paths:
        return {"precision_at_1": math.nan, "map_at_r": math.nan}
    embeddings = embed_paths(
        model,
        [root / path for path in data.val_paths],
        config.image_size,
        device,
        config.eval_batch_size,
    )
    scores = retrieval_metrics(embeddings, np.array(data.val_labels), ks=(1,))
    return {"precision_at_1": scores["precision_at_1"], "map_at_r": scores["map_at_r"]}


def seed_worker(_worker_id: int) -> None:
    # DataLoader seeds torch per worker from its generator; numpy and random follow it
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
