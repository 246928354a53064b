"""The gallery: embeddings of known faces that new faces are compared with.

A face is named after the gallery images it is most similar to (cosine similarity of unit
embeddings); a character's score is its best-matching image's similarity. Faces whose best
score stays below the calibrated threshold are reported as unknown.

The gallery is built from curated crops (the training split by default) with the trained
embedder, without training anything, so a character whose crops went through the data
stages can be added by rebuilding it (``anime-face-id gallery rebuild``). It is saved as
``models/gallery.npz`` (plain arrays, loaded with ``allow_pickle=False``) together with the
sha256 of the embedder checkpoint it was made with: a gallery made by another embedder
lives in another embedding space, and is refused as stale instead of giving wrong names.

Threshold calibration (``calibrate``): every validation image is a query against the
training gallery. Its score for its own character is a *genuine* score (what a known face
gets); its best score among the *other* characters is an *impostor* score (what it would get
if its character were not in the gallery, i.e. an unknown face), and so is every held-out
character's best score. The threshold is the equal error rate point of these two
distributions: as many known faces are wrongly called unknown as unknown faces are wrongly
given a name.

Search: ``ExactIndex`` (one matrix product) for small galleries, ``IvfIndex`` (k-means
coarse quantiser, scanning only the lists nearest to the query) for large ones, behind the
same ``search(queries, k) -> (indices, similarities)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from anime_face_id import layout
from anime_face_id.config import IdentifyConfig, Params
from anime_face_id.errors import StageError
from anime_face_id.fileio import atomic_write_bytes

GALLERY = Path("models/gallery.npz")
FORMAT_VERSION = 1
# When nothing can be calibrated (no validation images, one character), no face is
# called unknown: every face gets its best match, and the metadata says why.
UNCALIBRATED_THRESHOLD = -1.0
_KMEANS_ITERATIONS = 12
_CHUNK = 4096  # vectors compared at once: bounds memory at CHUNK x gallery size


class GalleryError(StageError):
    """The gallery file is missing, unreadable, or unusable with this embedder."""


class StaleGallery(GalleryError):
    """The gallery was built with another embedder than the one in use."""


# --------------------------------------------------------------------- search


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"expected an (N, D) array, got shape {array.shape}")
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


def top_k(similarity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the columns of the ``k`` largest values, best first (ties: lower column)."""
    count = similarity.shape[1]
    k = min(k, count)
    if k <= 0:
        rows = similarity.shape[0]
        return np.zeros((rows, 0), np.int64), np.zeros((rows, 0), np.float32)
    if k < count:
        chosen = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        chosen.sort(axis=1)  # stable order below then breaks ties by column
    else:
        chosen = np.broadcast_to(np.arange(count), similarity.shape)
    values = np.take_along_axis(similarity, chosen, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return (
        np.take_along_axis(chosen, order, axis=1).astype(np.int64),
        np.take_along_axis(values, order, axis=1).astype(np.float32),
    )


class SearchIndex(Protocol):
    kind: str

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) gallery indices and similarities, best first; -1 / -inf pad a row
        when fewer than ``k`` items were reachable."""
        ...


class ExactIndex:
    """Every gallery item compared with every query: exact, fine up to ~10^5 items."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray):
        self.vectors = unit_rows(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = unit_rows(queries)
        found = [top_k(queries[s : s + _CHUNK] @ self.vectors.T, k) for s in _starts(queries)]
        return _stack(found, min(k, len(self.vectors)))


def _starts(queries: np.ndarray) -> range:
    return range(0, max(len(queries), 1), _CHUNK)


def _stack(found: list, width: int) -> tuple[np.ndarray, np.ndarray]:
    if not found:
        return np.zeros((0, width), np.int64), np.zeros((0, width), np.float32)
    return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])


def spherical_kmeans(vectors: np.ndarray, lists: int, seed: int) -> np.ndarray:
    """``lists`` unit centroids of unit ``vectors`` (cosine k-means, seeded)."""
    rng = np.random.default_rng(seed)
    lists = max(1, min(lists, len(vectors)))
    centroids = vectors[rng.choice(len(vectors), size=lists, replace=False)].copy()
    for _ in range(_KMEANS_ITERATIONS):
        assignment = nearest_centroid(vectors, centroids)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assignment, vectors)
        counts = np.bincount(assignment, minlength=lists)
        empty = counts == 0
        # An emptied list restarts at a random item rather than dying: every list keeps
        # a share of the gallery, so no probe is wasted.
        sums[empty] = vectors[rng.choice(len(vectors), size=int(empty.sum()))]
        centroids = unit_rows(sums)
    return centroids


def nearest_centroid(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [
            np.argmax(vectors[s : s + _CHUNK] @ centroids.T, axis=1)
            for s in range(0, len(vectors), _CHUNK)
        ]
    )


class IvfIndex:
    """Inverted lists over a k-means coarse quantiser (the idea of FAISS's IndexIVFFlat):
    a query is compared with the ``probes`` nearest centroids, then exactly with the items
    of those lists only. Approximate: an item in an unprobed list is missed; probing every
    list gives the exact answer."""

    kind = "ivf"

    def __init__(self, vectors: np.ndarray, lists: int, probes: int, seed: int = 0):
        self.vectors = unit_rows(vectors)
        self.centroids = spherical_kmeans(self.vectors, lists, seed)
        assignment = nearest_centroid(self.vectors, self.centroids)
        self.members = [np.flatnonzero(assignment == c) for c in range(len(self.centroids))]
        self.probes = max(1, min(probes, len(self.centroids)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = unit_rows(queries)
        probed, _ = top_k(queries @ self.centroids.T, self.probes)
        width = min(k, len(self.vectors))
        indices = np.full((len(queries), width), -1, np.int64)
        values = np.full((len(queries), width), -np.inf, np.float32)
        for row, lists in enumerate(probed):
            candidates = np.concatenate([self.members[c] for c in lists])
            best, similarity = top_k(queries[row : row + 1] @ self.vectors[candidates].T, k)
            indices[row, : best.shape[1]] = candidates[best[0]]
            values[row, : best.shape[1]] = similarity[0]
        return indices, values


def make_index(vectors: np.ndarray, config: IdentifyConfig) -> SearchIndex:
    kind = config.index
    if kind == "auto":
        kind = "exact" if len(vectors) <= config.exact_max_items else "ivf"
    if kind == "exact" or len(vectors) == 0:
        return ExactIndex(vectors)
    lists = config.ivf_lists or max(1, round(math.sqrt(len(vectors))))
    return IvfIndex(vectors, lists, config.ivf_probes, config.seed)


# --------------------------------------------------------------------- the gallery


@dataclass(frozen=True)
class Calibration:
    threshold: float
    method: str  # val_eer | configured | uncalibrated
    genuine: int  # known-face scores it was chosen from
    impostor: int  # unknown-face scores it was chosen from
    false_accept: float | None  # unknown faces given a name, at the threshold
    false_reject: float | None  # known faces called unknown, at the threshold
    note: str = ""


@dataclass
class Gallery:
    embeddings: np.ndarray  # (N, D) float32, unit rows
    labels: np.ndarray  # (N,) int, index into class_names
    class_names: list[str]
    paths: list[str]  # POSIX, relative to the project root
    embedder: str  # sha256 of the checkpoint file the embeddings came from
    calibration: Calibration
    meta: dict = field(default_factory=dict)
    _index: SearchIndex | None = field(default=None, repr=False)
    _grouped: tuple[CharacterGroups, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    def use_index(self, config: IdentifyConfig) -> None:
        self._index = make_index(self.embeddings, config)

    @property
    def index(self) -> SearchIndex:
        if self._index is None:
            self._index = ExactIndex(self.embeddings)
        return self._index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar gallery items of each query (see ``SearchIndex``)."""
        return self.index.search(np.atleast_2d(queries), k)

    @property
    def grouped(self) -> tuple[CharacterGroups, np.ndarray]:
        """The character grouping and the unit embeddings in its column order (cached)."""
        if self._grouped is None:
            groups = CharacterGroups.of(self.labels)
            self._grouped = (groups, self.embeddings[groups.order])  # unit rows already
        return self._grouped

    def character_of(self, index: int) -> str:
        return self.class_names[int(self.labels[index])]

    def check_embedder(self, fingerprint: str, where: str = "the gallery") -> None:
        if fingerprint != self.embedder:
            raise StaleGallery(
                f"{where} was built with another embedder (checkpoint sha256 "
                f"{self.embedder[:12]}…, the model in use is {fingerprint[:12]}…): its "
                "embeddings cannot be compared with this model's. Rebuild it: "
                "`.venv/bin/anime-face-id gallery rebuild` (or `.venv/bin/dvc repro package`)."
            )


def embedder_fingerprint(checkpoint: Path) -> str:
    digest = hashlib.sha256()
    with Path(checkpoint).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_gallery(gallery: Gallery, path: Path) -> None:
    meta = {
        **gallery.meta,
        "format_version": FORMAT_VERSION,
        "embedder": gallery.embedder,
        "calibration": asdict(gallery.calibration),
    }
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        embeddings=gallery.embeddings.astype(np.float32),
        labels=gallery.labels.astype(np.int32),
        # fixed-width unicode arrays: loadable without pickle
        class_names=np.array(gallery.class_names, dtype=np.str_),
        paths=np.array(gallery.paths, dtype=np.str_),
        meta=np.array(json.dumps(meta, sort_keys=True)),
    )
    atomic_write_bytes(path, buffer.getvalue())


def load_gallery(path: Path) -> Gallery:
    """The saved gallery; a missing, damaged or foreign file is a GalleryError."""
    path = Path(path)
    if not path.is_file():
        raise GalleryError(
            f"{path} not found: build it with `.venv/bin/anime-face-id gallery rebuild` "
            "(or `.venv/bin/dvc repro package`)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        meta = json.loads(str(arrays["meta"]))
        calibration = Calibration(**meta["calibration"])
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise GalleryError(f"{path} is not a readable gallery ({error}): rebuild it") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise GalleryError(f"{path} has gallery format {meta.get('format_version')}: rebuild it")
    gallery = Gallery(
        embeddings=unit_rows(arrays["embeddings"]),
        labels=arrays["labels"].astype(np.int64),
        class_names=[str(name) for name in arrays["class_names"]],
        paths=[str(p) for p in arrays["paths"]],
        embedder=str(meta["embedder"]),
        calibration=calibration,
        meta=meta,
    )
    _check_shapes(gallery, path)
    return gallery


def _check_shapes(gallery: Gallery, path: Path) -> None:
    n = len(gallery.paths)
    consistent = gallery.embeddings.shape[0] == n and gallery.labels.shape == (n,)
    if n and (gallery.labels.min() < 0 or gallery.labels.max() >= len(gallery.class_names)):
        consistent = False
    if not consistent:
        raise GalleryError(f"{path}: arrays of different lengths or bad labels: rebuild it")


# --------------------------------------------------------------------- calibration


def eer_threshold(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float, float]:
    """(threshold, false accept rate, false reject rate) where the two rates are closest.

    A score >= threshold is accepted. Candidate thresholds are the observed scores."""
    genuine, impostor = np.sort(genuine), np.sort(impostor)
    thresholds = np.unique(np.concatenate([genuine, impostor]))
    false_reject = np.searchsorted(genuine, thresholds, side="left") / len(genuine)
    false_accept = 1.0 - np.searchsorted(impostor, thresholds, side="left") / len(impostor)
    best = int(np.argmin(np.abs(false_accept - false_reject)))
    return float(thresholds[best]), float(false_accept[best]), float(false_reject[best])


@dataclass(frozen=True)
class CharacterGroups:
    """Gallery columns grouped by character, so per-character maxima are one
    ``np.maximum.reduceat`` over a similarity table computed in this order."""

    order: np.ndarray  # the gallery item behind each grouped column
    starts: np.ndarray  # first grouped column of each character present
    present: np.ndarray  # that character's label

    @classmethod
    def of(cls, labels: np.ndarray) -> CharacterGroups:
        labels = np.asarray(labels)
        order = np.argsort(labels, kind="stable")
        grouped = labels[order]
        starts = (
            np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]]) if len(grouped) else grouped
        )
        return cls(order, starts.astype(np.int64), grouped[starts] if len(grouped) else grouped)

    def maxima(self, grouped_similarity: np.ndarray, classes: int) -> np.ndarray:
        """(Q, classes) from a (Q, N) table whose columns follow ``order`` (-inf for a
        character without items)."""
        scores = np.full((grouped_similarity.shape[0], classes), -np.inf, np.float32)
        if len(self.starts):
            scores[:, self.present] = np.maximum.reduceat(grouped_similarity, self.starts, axis=1)
        return scores


def character_maxima(similarity: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """(Q, classes) from a (Q, N) similarity table: per row, the highest value among each
    character's columns (-inf for a character without items)."""
    groups = CharacterGroups.of(labels)
    return groups.maxima(similarity[:, groups.order], classes)


def best_per_character(
    queries: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, classes: int
) -> np.ndarray:
    """(Q, classes): each query's highest similarity to each character's items
    (-inf for a character without items)."""
    return character_maxima(unit_rows(queries) @ unit_rows(embeddings).T, labels, classes)


def calibration_scores(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    classes: int,
    val: np.ndarray,
    val_labels: np.ndarray,
    holdout: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor scores (see the module docstring). ``val_labels`` of -1 mark
    validation images of characters the gallery lacks: impostors, like held-out ones."""
    genuine, impostor = [], []
    if len(val):
        scores = best_per_character(val, gallery, gallery_labels, classes)
        known = val_labels >= 0
        rows = np.flatnonzero(known)
        genuine.append(scores[rows, val_labels[rows]])
        others = scores[known].copy()
        others[np.arange(len(rows)), val_labels[rows]] = -np.inf
        impostor.append(others.max(axis=1))  # -inf with one character: dropped below
        impostor.append(scores[~known].max(axis=1))
    if len(holdout):
        impostor.append(best_per_character(holdout, gallery, gallery_labels, classes).max(axis=1))
    genuine_all = np.concatenate(genuine) if genuine else np.zeros(0, np.float32)
    impostor_all = np.concatenate(impostor) if impostor else np.zeros(0, np.float32)
    return genuine_all[np.isfinite(genuine_all)], impostor_all[np.isfinite(impostor_all)]


def calibrate(genuine: np.ndarray, impostor: np.ndarray, configured: float | None) -> Calibration:
    counts = {"genuine": len(genuine), "impostor": len(impostor)}
    rates: dict = {"false_accept": None, "false_reject": None}
    threshold = None
    if len(genuine) and len(impostor):
        threshold, far, frr = eer_threshold(genuine, impostor)
        rates = {"false_accept": far, "false_reject": frr}
    if configured is not None:
        if len(genuine) and len(impostor):
            rates = {
                "false_accept": float((impostor >= configured).mean()),
                "false_reject": float((genuine < configured).mean()),
            }
        return Calibration(float(configured), "configured", **counts, **rates)
    if threshold is None:
        return Calibration(
            UNCALIBRATED_THRESHOLD,
            "uncalibrated",
            **counts,
            **rates,
            note="no validation images of at least two gallery characters: every face "
            "gets its best match (set identify.threshold to choose one)",
        )
    return Calibration(threshold, "val_eer", **counts, **rates)


# --------------------------------------------------------------------- building


@dataclass
class GalleryRows:
    gallery: list[dict[str, str]]
    calibration_gallery: list[dict[str, str]]  # train split: never holds a val image
    val: list[dict[str, str]]
    holdout: list[dict[str, str]]


def _split_rows(root: Path, name: str) -> list[dict[str, str]]:
    return layout.read_table(root, layout.split_csv(name), layout.SPLIT_COLUMNS)


def gallery_rows(root: Path, source: str) -> GalleryRows:
    """The rows to embed. The threshold is always calibrated on val against the train
    split (a gallery holding the val images themselves would make every val query a
    perfect match)."""
    train = _split_rows(root, "train")
    if source == "curated":
        gallery = layout.read_table(root, layout.CURATED_MANIFEST, ("character", "path"), "review")
    else:
        gallery = layout.read_table(root, layout.split_csv("train"), layout.SPLIT_COLUMNS, "split")
    return GalleryRows(gallery, train, _split_rows(root, "val"), _split_rows(root, "holdout"))


def _labels(rows: list[dict[str, str]], class_names: list[str]) -> np.ndarray:
    label_of = {name: index for index, name in enumerate(class_names)}
    return np.array([label_of.get(row["character"], -1) for row in rows], dtype=np.int64)


def build_gallery(
    rows: GalleryRows,
    vectors: dict[str, np.ndarray],
    embedder: str,
    config: IdentifyConfig,
    meta: dict | None = None,
) -> Gallery:
    """The gallery of ``rows`` given each path's embedding (``vectors``; rows whose path
    has none, e.g. unreadable images, are left out), with its calibrated threshold."""
    keep = [row for row in rows.gallery if row["path"] in vectors]
    class_names = sorted({row["character"] for row in keep})
    if not class_names:
        raise GalleryError("no readable gallery images: run the data stages first")

    def embedded(subset: list[dict[str, str]]) -> tuple[np.ndarray, list[dict[str, str]]]:
        present = [row for row in subset if row["path"] in vectors]
        stacked = [vectors[row["path"]] for row in present]
        return (np.stack(stacked) if stacked else np.zeros((0, 1), np.float32)), present

    train, train_rows = embedded(rows.calibration_gallery)
    val, val_rows = embedded(rows.val)
    holdout, _ = embedded(rows.holdout)
    train_names = sorted({row["character"] for row in train_rows})
    genuine, impostor = (
        calibration_scores(
            train,
            _labels(train_rows, train_names),
            len(train_names),
            val,
            _labels(val_rows, train_names),
            holdout,
        )
        if train_rows
        else (np.zeros(0), np.zeros(0))
    )
    embeddings, _ = embedded(keep)
    return Gallery(
        embeddings=unit_rows(embeddings),
        labels=_labels(keep, class_names),
        class_names=class_names,
        paths=[row["path"] for row in keep],
        embedder=embedder,
        calibration=calibrate(genuine, impostor, config.threshold),
        meta={
            **(meta or {}),
            "items": len(keep),
            "characters": len(class_names),
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def rebuild_gallery(
    root: Path,
    params: Params,
    checkpoint: Path,
    destination: Path,
    source: str | None = None,
    device: str | None = None,
) -> tuple[Gallery, dict[str, str]]:
    """Embed the gallery rows with the checkpoint's network, calibrate, save atomically.

    Returns the gallery and the images left out ({path: reason}). Nothing is trained."""
    # The network stack is imported here, so that reading a gallery stays light.
    from anime_face_id.checkpoint import load_checkpoint
    from anime_face_id.dataset import require_paths_inside, unreadable_images
    from anime_face_id.device import resolve_device
    from anime_face_id.embed import embed_paths

    root = Path(root)
    config = params.identify
    source = source or config.gallery_source
    rows = gallery_rows(root, source)
    everything = rows.gallery + rows.calibration_gallery + rows.val + rows.holdout
    require_paths_inside(everything, f"the {source} gallery tables")
    paths = list(dict.fromkeys(row["path"] for row in everything))
    skipped = unreadable_images(root, paths)
    paths = [path for path in paths if path not in skipped]
    torch_device = resolve_device(device or config.device)
    loaded = load_checkpoint(checkpoint, torch_device)
    embedded = embed_paths(
        loaded.model, [root / p for p in paths], loaded.image_size, torch_device, config.batch_size
    ).numpy()
    meta = {
        "source": source,
        "image_size": loaded.image_size,
        "embedding_dim": loaded.embedding_dim,
        "trained_characters": loaded.class_names,
        "crop": {"margin": params.crop.margin, "size": params.crop.size},
    }
    gallery = build_gallery(
        rows,
        dict(zip(paths, embedded, strict=True)),
        embedder_fingerprint(checkpoint),
        config,
        meta,
    )
    save_gallery(gallery, destination)
    return gallery, skipped


def describe(gallery: Gallery) -> dict:
    """What ``gallery info`` prints and the package stage records."""
    counts = np.bincount(gallery.labels, minlength=len(gallery.class_names))
    trained = set(gallery.meta.get("trained_characters", []))
    return {
        "items": len(gallery),
        "characters": len(gallery.class_names),
        "images_per_character": {
            name: int(count) for name, count in zip(gallery.class_names, counts, strict=True)
        },
        "not_trained_on": sorted(set(gallery.class_names) - trained) if trained else [],
        "threshold": gallery.threshold,
        "calibration": asdict(gallery.calibration),
        "source": gallery.meta.get("source"),
        "embedder_sha256": gallery.embedder,
        "built_at": gallery.meta.get("built_at"),
    }
