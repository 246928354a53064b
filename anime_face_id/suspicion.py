"""Suspicion scores for the review app: which crops a reviewer should look at first.

Two signals, both cheap to explain to a reviewer:
- distance from the character's centroid in an image-embedding space (the trained embedder
  when models/embedder.pt loads, else the ImageNet backbone's pooled features): a crop of
  somebody else, or not a face at all, sits far from the bulk of a character's crops;
- near-duplicates across characters: the same picture filed under two characters means at
  least one of the two is wrong, so both are flagged.

Embeddings take a while on a CPU, so they are computed only for the crops a reviewer asks
about and cached in ``.cache/review/`` (outside every DVC output), keyed by each file's
path, size and mtime, so an edited or re-cropped file is embedded again.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from anime_face_id import layout
from anime_face_id.chunked_embedding import IMAGENET
from anime_face_id.embedding_store import PathEmbedder
from anime_face_id.fileio import atomic_write_bytes
from anime_face_id.imaging import ImageRejected, load_rgb
from anime_face_id.misfiled import TRIM_FRACTION, trimmed_centre
from anime_face_id.search_index import unit_rows
from anime_face_id.transforms import preprocess

CACHE_DIR = Path(".cache") / "review"
BATCH_SIZE = 16
# Save the cache this often while embedding, so a reviewer who switches character (which
# stops the script) keeps what was computed so far.
SAVE_EVERY = 64
# Crops sent to a cluster at a time: several chunks of chunked_embedding, so that several
# workers share each group.
ELSEWHERE_GROUP = 8 * SAVE_EVERY

Encoder = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) -> (B, D)
Progress = Callable[[int, int], None]


class FeaturesUnavailable(RuntimeError):
    """The feature network cannot be loaded (e.g. a damaged models/embedder.pt)."""


@dataclass(frozen=True)
class Features:
    """A loaded feature network and the input size it expects."""

    encode: Encoder
    image_size: int


@dataclass(frozen=True)
class FeatureSpec:
    """Which features the suspicion scores use, before anything is loaded; ``id`` names
    the cache file and changes whenever the features would (other weights, input size)."""

    id: str
    description: str
    load: Callable[[], Features] = field(compare=False, repr=False)
    # what chunked_embedding calls the network (a checkpoint's path, or IMAGENET at
    # ``image_size``), for embedding on a Dask cluster's workers
    network: str = ""
    image_size: int | None = None


def imagenet_spec(image_size: int) -> FeatureSpec:
    def load() -> Features:
        from anime_face_id.model.efficientnet_lite import (
            EfficientNetLite0,
            load_imagenet_weights,
        )

        model = EfficientNetLite0()
        load_imagenet_weights(model)
        model.eval()
        return Features(model.features, image_size)

    return FeatureSpec(
        f"imagenet-efficientnet_lite0-{image_size}",
        "ImageNet EfficientNet-Lite0 pooled features",
        load,
        network=IMAGENET,
        image_size=image_size,
    )


def trained_spec(weights: Path) -> FeatureSpec:
    """The trained embedder in ``weights`` (anime_face_id.checkpoint's format)."""
    # size + mtime rather than the file's sha256: the app asks on every rerun
    digest = hashlib.sha256(file_stamp(weights).encode()).hexdigest()[:16]

    def load() -> Features:
        from anime_face_id.checkpoint import load_checkpoint

        try:
            loaded = load_checkpoint(weights)
        except Exception as error:  # StageError for a foreign file, torch errors besides
            raise FeaturesUnavailable(f"cannot load {weights.name}: {error}") from None
        return Features(loaded.model, loaded.image_size)

    return FeatureSpec(
        f"embedder-{digest}", "the trained embedder", load, network=str(Path(weights).resolve())
    )


def feature_spec(root: Path, image_size: int) -> tuple[FeatureSpec, str]:
    """The trained embedder when models/embedder.pt exists, else the ImageNet backbone at
    ``image_size``; the second value says why, for the UI."""
    weights = Path(root) / layout.EMBEDDER
    if not weights.is_file():
        return imagenet_spec(image_size), "no trained embedder yet (models/embedder.pt)"
    return trained_spec(weights), layout.EMBEDDER.as_posix()


def file_stamp(path: Path) -> str:
    """Size and mtime: a changed file gets a new stamp without reading it."""
    info = path.stat()
    return f"{info.st_size}:{info.st_mtime_ns}"


class EmbeddingCache:
    """path -> (stamp, unit vector), stored as one .npz per feature spec."""

    def __init__(self, path: Path, entries: dict[str, tuple[str, np.ndarray]] | None = None):
        self.path = path
        self.entries = entries or {}

    @classmethod
    def open(cls, root: Path, spec: FeatureSpec) -> EmbeddingCache:
        path = Path(root) / CACHE_DIR / f"embeddings-{spec.id}.npz"
        return cls(path, _read_entries(path))

    def get(self, key: str, stamp: str) -> np.ndarray | None:
        entry = self.entries.get(key)
        return entry[1] if entry is not None and entry[0] == stamp else None

    def put(self, key: str, stamp: str, vector: np.ndarray) -> None:
        self.entries[key] = (stamp, vector)

    def save(self) -> None:
        """Merge with what another session may have saved meanwhile, then replace the file
        atomically; entries made here win."""
        merged = {**_read_entries(self.path), **self.entries}
        self.entries = merged
        if not merged:
            return
        keys = sorted(merged)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            paths=np.array(keys),
            stamps=np.array([merged[key][0] for key in keys]),
            vectors=np.stack([merged[key][1] for key in keys]).astype(np.float32),
        )
        atomic_write_bytes(self.path, buffer.getvalue())


def _read_entries(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            paths, stamps, vectors = data["paths"], data["stamps"], data["vectors"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return {}  # a damaged cache is only a cache: recompute
    return {str(p): (str(s), v) for p, s, v in zip(paths, stamps, vectors, strict=True)}


@dataclass
class Embeddings:
    vectors: dict[str, np.ndarray]  # crop path -> unit vector
    failed: dict[str, str]  # crop path -> why it could not be embedded
    computed: int  # how many were computed now rather than read from the cache


def embed_files(
    root: Path,
    paths: Sequence[str],
    spec: FeatureSpec,
    progress: Progress | None = None,
    features: Features | None = None,
    elsewhere: Callable[[FeatureSpec], PathEmbedder | None] | None = None,
) -> Embeddings:
    """Unit-length embeddings of the crops at ``paths`` (POSIX, relative to ``root``).

    Cached ones are read back; the network is only loaded (``spec.load``, unless given as
    ``features``) when something is missing; FeaturesUnavailable if it cannot be.
    ``elsewhere(spec)`` (e.g. a Dask cluster's ``client_embedder``; None: not available)
    embeds what is missing instead, a group at a time; a group it cannot embed (an
    unreadable crop) is embedded here, where each file's failure is recorded.
    ``progress(done, total)`` is called for the files that need computing."""
    root = Path(root)
    cache = EmbeddingCache.open(root, spec)
    result = Embeddings({}, {}, 0)
    todo: list[tuple[str, str]] = []
    for path in paths:
        try:
            stamp = file_stamp(root / path)
        except OSError as error:
            result.failed[path] = f"cannot read the file: {error.strerror or error}"
            continue
        cached = cache.get(path, stamp)
        if cached is None:
            todo.append((path, stamp))
        else:
            result.vectors[path] = cached
    if not todo:
        return result
    counter = _Counter(len(todo), progress)
    embed = elsewhere(spec) if elsewhere is not None else None
    if embed is not None:
        todo = _compute_elsewhere(todo, embed, cache, result, counter)
    if todo:
        _compute(root, todo, features or spec.load(), cache, result, counter)
    return result


@dataclass
class _Counter:
    """Progress over every file to compute, wherever it is computed."""

    total: int
    report: Progress | None
    done: int = 0

    def add(self, count: int) -> None:
        self.done += count
        if self.report is not None:
            self.report(min(self.done, self.total), self.total)


def _compute_elsewhere(
    todo: list[tuple[str, str]],
    embed: PathEmbedder,
    cache: EmbeddingCache,
    result: Embeddings,
    counter: _Counter,
) -> list[tuple[str, str]]:
    """What ``embed`` did not manage, to be embedded here. A group of several chunks goes
    out at a time (so that several workers share it), and is saved when it is back."""
    left = []
    group = ELSEWHERE_GROUP
    for start in range(0, len(todo), group):
        batch = todo[start : start + group]
        try:
            vectors = unit_rows(embed([path for path, _ in batch]))
        except Exception:  # a worker's error, e.g. an unreadable crop: each file is tried here
            left += batch
            continue
        for (path, stamp), vector in zip(batch, vectors, strict=True):
            cache.put(path, stamp, vector)
            result.vectors[path] = vector
        result.computed += len(batch)
        cache.save()
        counter.add(len(batch))
    return left


def _compute(
    root: Path,
    todo: list[tuple[str, str]],
    features: Features,
    cache: EmbeddingCache,
    result: Embeddings,
    counter: _Counter,
) -> None:
    unsaved = 0
    for start in range(0, len(todo), BATCH_SIZE):
        batch = todo[start : start + BATCH_SIZE]
        ready = _load_batch(root, batch, features.image_size, result.failed)
        if ready:
            with torch.inference_mode():
                output = features.encode(torch.stack([tensor for _, _, tensor in ready]))
            for (path, stamp, _), vector in zip(ready, unit_rows(output.numpy()), strict=True):
                cache.put(path, stamp, vector)
                result.vectors[path] = vector
            result.computed += len(ready)
            unsaved += len(ready)
        if unsaved >= SAVE_EVERY:
            cache.save()
            unsaved = 0
        counter.add(len(batch))
    if unsaved:
        cache.save()


def _load_batch(
    root: Path, batch: list[tuple[str, str]], image_size: int, failed: dict[str, str]
) -> list[tuple[str, str, torch.Tensor]]:
    ready = []
    for path, stamp in batch:
        try:
            ready.append((path, stamp, preprocess(load_rgb(root / path), image_size)))
        except ImageRejected as error:
            failed[path] = error.reason
        except OSError as error:
            failed[path] = f"cannot read the file: {error.strerror or error}"
    return ready


def centroid_distances(vectors: np.ndarray, trim: float = TRIM_FRACTION) -> np.ndarray:
    """Cosine distance (0 = same direction, up to 2) of each row from a trimmed centroid:
    the mean direction of all rows, re-estimated without the farthest ``trim`` of them."""
    if len(vectors) == 0:
        return np.zeros(0, dtype=np.float32)
    return (1.0 - unit_rows(vectors) @ trimmed_centre(vectors, trim)).astype(np.float32)


def _hash_value(text: str) -> int | None:
    try:
        value = int(text, 16)
    except (TypeError, ValueError):
        return None
    return value if 0 <= value < 2**64 else None


def cross_character_duplicates(
    entries: Sequence[tuple[str, str, str]], max_distance: int, block: int = 1024
) -> dict[str, tuple[str, ...]]:
    """For (path, character, phash hex) entries: path -> the paths of other characters'
    crops whose perceptual hash is within ``max_distance`` bits. Both sides of each pair
    are listed; crops without a usable hash are skipped."""
    usable = [(p, c, v) for p, c, h in entries if (v := _hash_value(h)) is not None]
    if len(usable) < 2:
        return {}
    hashes = np.array([v for _, _, v in usable], dtype=np.uint64)
    characters = np.array([c for _, c, _ in usable])
    found: dict[str, list[str]] = {}
    # Blocks of rows keep memory at block x n whatever the number of crops.
    for start in range(0, len(usable), block):
        rows = slice(start, start + block)
        bits = np.bitwise_count(hashes[rows, None] ^ hashes[None, :])
        close = (bits <= max_distance) & (characters[rows, None] != characters[None, :])
        for i, j in zip(*np.nonzero(close), strict=True):
            found.setdefault(usable[start + i][0], []).append(usable[j][0])
    return {path: tuple(others) for path, others in found.items()}


def distances_by_path(vectors: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Centroid distance of every crop of one character, keyed by path."""
    paths = list(vectors)
    if not paths:
        return {}
    distances = centroid_distances(np.stack([vectors[path] for path in paths]))
    return {path: float(value) for path, value in zip(paths, distances, strict=True)}
