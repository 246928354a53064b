"""Faces filed under a character they do not look like, by a trained embedding.

A face is misfiled when it is nearer (cosine) another character's centre than its own:
a face of somebody else that review let through, as a picture's second character is. Each
centre is trimmed (re-estimated without the farthest fifth of the character's faces), so
a character's misfiled faces do not drag its centre towards themselves. Parameter-free on
purpose: a right face this far from its own character is rare (benchmarks/quality.py:
1-2 of 288 with a fifth of the faces misnamed, 4-8 of 360 without), and a reviewer would
want to see it too.
"""

from __future__ import annotations

import numpy as np

from anime_face_id.search_index import unit_rows

# Faces farther than the rest are left out of the second centre estimate, so one or two
# outliers in a small character do not drag the centre towards themselves.
TRIM_FRACTION = 0.2


def trimmed_centre(vectors: np.ndarray, trim: float = TRIM_FRACTION) -> np.ndarray:
    """The unit mean direction of ``vectors`` (N >= 1 rows), re-estimated without the
    farthest ``trim`` of them."""
    unit = unit_rows(vectors)
    centre = unit_rows(unit.mean(axis=0, keepdims=True))[0]
    keep = int(np.ceil(len(unit) * (1.0 - trim)))
    if 0 < keep < len(unit):
        core = unit[np.argsort(1.0 - unit @ centre, kind="stable")[:keep]]
        centre = unit_rows(core.mean(axis=0, keepdims=True))[0]
    return centre


def looks_like(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) labels: for each face, the character whose trimmed centre it is nearest, its
    own on a tie. A character none of whose faces is nearest its own centre keeps them all:
    nothing is left to tell its look by. (Against one other centre, some face is always
    nearer its own, which is those faces' mean direction; against several, each face can
    be nearer a different one.)"""
    return looks_like_by(embeddings, labels)[0]


def looks_like_by(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``looks_like``'s labels and, for each face, by how much (cosine) it is nearer the
    nearest other character's centre than its own: above 0 for the faces that look like
    another character, the most telling first when sorted."""
    labels = np.asarray(labels)
    characters = np.unique(labels)
    if len(characters) < 2:
        return labels.copy(), np.full(len(labels), -np.inf)
    unit = unit_rows(embeddings)
    centres = np.stack([trimmed_centre(unit[labels == c]) for c in characters])
    similarity = unit @ centres.T
    rows, own_column = np.arange(len(labels)), np.searchsorted(characters, labels)
    own = similarity[rows, own_column].copy()
    similarity[rows, own_column] = -np.inf
    nearest_other = similarity.argmax(axis=1)
    margin = similarity[rows, nearest_other] - own
    flagged = margin > 0
    for character in characters:
        faces = labels == character
        if flagged[faces].all():
            flagged[faces] = False
    return np.where(flagged, characters[nearest_other], labels), margin


def misfiled(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) bool: True for each face nearer another character's trimmed centre than its
    own character's (``looks_like``)."""
    labels = np.asarray(labels)
    return looks_like(embeddings, labels) != labels
