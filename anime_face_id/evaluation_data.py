"""What evaluate reads and embeds: the rows of every split without unreadable images, and
each split as paths, character labels and unit embeddings (``EmbeddedSplit``), embedded by
a ``PathEmbedder``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anime_face_id import layout
from anime_face_id.dataset import read_split, require_paths_inside, unreadable_images
from anime_face_id.embed import embed_paths
from anime_face_id.embedding_store import PathEmbedder
from anime_face_id.metrics import as_unit_array
from anime_face_id.misfiled import misfiled


@dataclass
class EmbeddedSplit:
    paths: list[str]
    labels: np.ndarray  # character names
    embeddings: np.ndarray  # (N, D), unit rows

    def __len__(self) -> int:
        return len(self.paths)

    def where(self, mask: np.ndarray) -> EmbeddedSplit:
        """The faces where ``mask`` (N bools) is True, in order."""
        return EmbeddedSplit(
            paths=[path for path, keep in zip(self.paths, mask, strict=True) if keep],
            labels=self.labels[mask],
            embeddings=self.embeddings[mask],
        )


def gallery_without_misfiled(gallery: EmbeddedSplit) -> EmbeddedSplit:
    """The gallery without the faces that look like another character (misfiled.py), as
    the package stage leaves them out with ``package.misfiled: leave_out``."""
    return gallery.where(~misfiled(gallery.embeddings, gallery.labels))


def readable_splits(root: Path) -> tuple[dict[str, list[dict[str, str]]], dict[str, str]]:
    """Rows of every split (holdout may be absent) without the unreadable images."""
    rows = {name: read_split(root, name, required=name != "holdout") for name in layout.SPLIT_NAMES}
    for name, split_rows in rows.items():
        require_paths_inside(split_rows, layout.split_csv(name).as_posix(), root)
    skipped = unreadable_images(root, [row["path"] for split in rows.values() for row in split])
    kept = {
        name: [row for row in split_rows if row["path"] not in skipped]
        for name, split_rows in rows.items()
    }
    return kept, skipped


def local_embedder(
    model: torch.nn.Module, root: Path, image_size: int, device: torch.device, batch_size: int
) -> PathEmbedder:
    """Embeds in this process, a batch at a time."""

    def embed(paths: Sequence[str]) -> np.ndarray:
        return embed_paths(model, [root / p for p in paths], image_size, device, batch_size).numpy()

    return embed


def embed_split(embed: PathEmbedder, rows: Sequence[dict[str, str]]) -> EmbeddedSplit:
    paths = [row["path"] for row in rows]
    return EmbeddedSplit(
        paths=paths,
        labels=np.array([row["character"] for row in rows], dtype=object),
        embeddings=as_unit_array(embed(paths)),
    )
