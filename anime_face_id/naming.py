"""What the gallery says about face embeddings: each face's best characters (a character
scores its best gallery item's similarity), its nearest gallery items, and a name when the
best score reaches the gallery's threshold."""

from __future__ import annotations

import math

import numpy as np

from anime_face_id.gallery import Gallery
from anime_face_id.identify_results import UNKNOWN, Candidate, Naming, Neighbour
from anime_face_id.search_index import top_k, unit_rows


def name_embeddings(
    gallery: Gallery, embeddings: np.ndarray, top: int, neighbours: int, search_depth: int
) -> list[Naming]:
    """Exact over every item when the gallery's index is exact; otherwise from the
    ``search_depth`` nearest items of its approximate index."""
    if gallery.index.kind == "exact":
        return name_exactly(gallery, embeddings, top, neighbours)
    depth = max(search_depth, neighbours, top)
    return name_from_neighbours(gallery, embeddings, top, neighbours, depth)


def verdict(gallery: Gallery, candidates: list[Candidate], nearest: list[Neighbour]) -> Naming:
    best = candidates[0] if candidates else Candidate(UNKNOWN, -math.inf)
    known = bool(candidates) and best.score >= gallery.threshold
    return Naming(best.character if known else None, best.score, candidates, nearest)


def name_exactly(
    gallery: Gallery, embeddings: np.ndarray, top: int, neighbours: int
) -> list[Naming]:
    """Every gallery item compared: each character's score is its best item's similarity
    (vectorised per character), the neighbours a partial sort."""
    groups, grouped_vectors = gallery.grouped
    similarity = unit_rows(np.atleast_2d(embeddings)) @ grouped_vectors.T
    scores = groups.maxima(similarity, len(gallery.class_names))
    best_classes, best_scores = top_k(scores, top)
    near_columns, near_similarities = top_k(similarity, neighbours)
    near_items = groups.order[near_columns]
    named = []
    for classes, class_scores, items, item_similarities in zip(
        best_classes, best_scores, near_items, near_similarities, strict=True
    ):
        candidates = [
            Candidate(gallery.class_names[int(c)], float(s))
            for c, s in zip(classes, class_scores, strict=True)
            if math.isfinite(s)
        ]
        nearest = [
            Neighbour(gallery.character_of(i), float(s), gallery.paths[int(i)])
            for i, s in zip(items, item_similarities, strict=True)
        ]
        named.append(verdict(gallery, candidates, nearest))
    return named


def name_from_neighbours(
    gallery: Gallery, embeddings: np.ndarray, top: int, neighbours: int, depth: int
) -> list[Naming]:
    """Characters scored from the ``depth`` nearest items only (approximate indexes)."""
    indices, similarities = gallery.search(embeddings, depth)
    named = []
    for row, sims in zip(indices, similarities, strict=True):
        ranked = [(int(i), float(s)) for i, s in zip(row, sims, strict=True) if i >= 0]
        candidates: list[Candidate] = []
        seen: set[str] = set()
        # A character's score is its best item's similarity: its first appearance.
        for index, similarity in ranked:
            character = gallery.character_of(index)
            if character not in seen:
                seen.add(character)
                candidates.append(Candidate(character, similarity))
                if len(candidates) == top:
                    break
        nearest = [
            Neighbour(gallery.character_of(i), s, gallery.paths[i]) for i, s in ranked[:neighbours]
        ]
        named.append(verdict(gallery, candidates, nearest))
    return named
