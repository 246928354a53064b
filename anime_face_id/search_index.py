"""Finding the gallery items most similar to a face: cosine similarity of unit embeddings.

``ExactIndex`` (one matrix product) for small galleries, ``IvfIndex`` (k-means coarse
quantiser, scanning only the lists nearest to the query) for large ones, behind the same
``search(queries, k) -> (indices, similarities)``; ``CharacterGroups`` turns a similarity
table into each character's best score in one vectorised reduction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from anime_face_id.config import IdentifyConfig

_KMEANS_ITERATIONS = 12
_CHUNK = 4096  # vectors compared at once: bounds memory at CHUNK x gallery size


def unit_rows(vectors: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays zero), as ``dtype``."""
    array = np.asarray(vectors, dtype=dtype)
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
        character without items), in the table's precision (float32 at least)."""
        dtype = np.result_type(grouped_similarity.dtype, np.float32)
        scores = np.full((grouped_similarity.shape[0], classes), -np.inf, dtype)
        if len(self.starts):
            scores[:, self.present] = np.maximum.reduceat(grouped_similarity, self.starts, axis=1)
        return scores


def best_per_character(
    queries: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, classes: int
) -> np.ndarray:
    """(Q, classes): each query's highest similarity to each character's items
    (-inf for a character without items). Queries go a chunk at a time: memory grows with
    the chunk times the gallery, not with all queries times the gallery."""
    queries, embeddings = unit_rows(queries), unit_rows(embeddings)
    groups = CharacterGroups.of(labels)
    ordered = embeddings[groups.order]
    chunks = [
        groups.maxima(queries[start : start + _CHUNK] @ ordered.T, classes)
        for start in range(0, len(queries), _CHUNK)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, classes), dtype=np.float32)
