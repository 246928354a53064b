"""Embeddings computed once and reused: evaluate embeds every split with the trained network
and stores the vectors in ``models/embeddings.npz``; package (and ``gallery rebuild``) take
them from there instead of running the network over the same crops again.

Each vector is stored under the crop's path with the sha256 of the file it was computed
from, and the file as a whole under the sha256 of the embedder checkpoint. A vector is
reused only when both still match, so a retrained network or a re-cut crop is embedded
again; a missing, damaged or foreign file simply reuses nothing. Vectors computed on another
device or in other batches may differ in their last float digits, never more.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from anime_face_id.fileio import atomic_write_bytes, file_sha256

EMBEDDINGS = Path("models/embeddings.npz")
FORMAT = "anime-face-id/embeddings/1"

# Crop paths (relative to the project root) -> their (N, D) embeddings, in order: in this
# process (``evaluation_data.local_embedder``) or spread over a task runner's workers
# (tasks/embedding.py).
PathEmbedder = Callable[[Sequence[str]], np.ndarray]


def embedder_fingerprint(checkpoint: Path) -> str:
    """What a gallery and stored embeddings name the network they came from."""
    return file_sha256(checkpoint)


def save_embeddings(
    path: Path, embedder: str, root: Path, vectors: Mapping[str, np.ndarray]
) -> None:
    """Store ``vectors`` ({crop path relative to ``root``: embedding}) atomically, made by
    the network whose ``embedder_fingerprint`` is ``embedder``."""
    paths = sorted(vectors)
    dimension = len(next(iter(vectors.values()))) if vectors else 0
    matrix = np.zeros((len(paths), dimension), dtype=np.float32)
    for row, crop in enumerate(paths):
        matrix[row] = vectors[crop]
    meta = {"format": FORMAT, "embedder": embedder}
    buffer = io.BytesIO()
    np.savez(
        buffer,
        embeddings=matrix,
        paths=np.array(paths, dtype=np.str_),
        files=np.array([file_sha256(Path(root) / crop) for crop in paths], dtype=np.str_),
        meta=np.array(json.dumps(meta)),
    )
    atomic_write_bytes(path, buffer.getvalue())


def stored_embeddings(
    path: Path, embedder: str, root: Path, wanted: Iterable[str], dimension: int | None = None
) -> dict[str, np.ndarray]:
    """The stored vectors of ``wanted`` crops that are still valid for the network
    ``embedder`` (its fingerprint) and the crop files as they are now; {} when nothing can
    be reused. ``dimension``: the network's embedding width, when the caller knows it (a
    file of another width reuses nothing)."""
    stored = _read_store(path, embedder)
    if stored is None:
        return {}
    paths, files, matrix = stored
    if dimension is not None and matrix.shape[1] != dimension:
        return {}
    rows = {crop: row for row, crop in enumerate(paths)}
    reusable = {}
    for crop in wanted:
        row = rows.get(crop)
        # a non-finite vector is damage, never what the network gave: embed that crop again
        if row is None or not np.isfinite(matrix[row]).all():
            continue
        try:
            unchanged = file_sha256(Path(root) / crop) == files[row]
        except OSError:
            continue
        if unchanged:
            reusable[crop] = matrix[row]
    return reusable


def _read_store(path: Path, embedder: str) -> tuple[list, list, np.ndarray] | None:
    """(paths, files, embeddings) of a store written by ``save_embeddings`` for the network
    ``embedder``; None for a missing, damaged or foreign file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            paths, files, matrix = data["paths"], data["files"], data["embeddings"]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    if meta.get("embedder") != embedder:
        return None
    if not _consistent(paths, files, matrix):
        return None
    return paths.tolist(), files.tolist(), matrix


def _consistent(paths: np.ndarray, files: np.ndarray, matrix: np.ndarray) -> bool:
    """One path and one file hash (strings) per row of a 2-D float matrix: anything else
    is a damaged file, whose rows cannot be matched with their crops."""
    strings = all(array.ndim == 1 and array.dtype.kind == "U" for array in (paths, files))
    return (
        strings
        and matrix.ndim == 2
        and matrix.dtype.kind == "f"
        and len(paths) == len(files) == len(matrix)
    )
