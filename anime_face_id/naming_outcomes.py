"""What `identify` would answer for faces whose character is known: named right, called
unknown, or named wrong, with the unknown-face threshold in place.

Identification precision@1 ranks the gallery and ignores the threshold; a user sees the
threshold's cost too (a known face below it is answered "unknown"). Here the gallery is the
training split and the threshold is calibrated on val alone, as the package stage does with
the default ``split.holdout_characters: 0``: test faces are then faces of trained characters
that neither training nor calibration saw, and held-out characters' faces are unknown faces
the threshold was not fitted to. Whatever ``split.holdout_characters``, ``package.threshold``
and ``identify.index`` say, it is this val-only threshold and exact search: the packaged
identifier may differ on those settings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anime_face_id.calibration import Calibration
from anime_face_id.evaluation_data import EmbeddedSplit
from anime_face_id.gallery import Gallery, GalleryError, GalleryRows, build_gallery
from anime_face_id.metrics import QUERY_CHUNK
from anime_face_id.naming import name_exactly


def gallery_rows(split: EmbeddedSplit) -> list[dict[str, str]]:
    """A split's faces as the gallery's rows (path and character)."""
    return [
        {"path": path, "character": str(label)}
        for path, label in zip(split.paths, split.labels, strict=True)
    ]


def gallery_calibrated_on_val(
    train: EmbeddedSplit,
    val: EmbeddedSplit,
    embedder: str,
    gallery: Sequence[EmbeddedSplit] | None = None,
    impostors: EmbeddedSplit | None = None,
) -> Gallery:
    """The faces of ``gallery`` (default: the training split) under a threshold calibrated
    on val against the training split, with ``impostors`` (held-out characters' faces,
    default none) among the impostor scores, as ``split.holdout_characters`` adds them."""
    gallery = [train] if gallery is None else list(gallery)
    extra = [] if impostors is None else [impostors]
    vectors = {
        path: vector
        for split in (*gallery, train, val, *extra)
        for path, vector in zip(split.paths, split.embeddings, strict=True)
    }
    rows = GalleryRows(
        gallery=[row for split in gallery for row in gallery_rows(split)],
        calibration_gallery=gallery_rows(train),
        val=gallery_rows(val),
        holdout=[row for split in extra for row in gallery_rows(split)],
    )
    return build_gallery(rows, vectors, embedder)


def verdicts(gallery: Gallery, faces: EmbeddedSplit) -> list[str | None]:
    """The character identify names for each face, None for "unknown" (a chunk of faces
    at a time: memory grows with the chunk times the gallery, not with every face)."""
    if not np.isfinite(faces.embeddings).all():
        raise GalleryError("non-finite embeddings (NaN or inf): the faces cannot be named")
    return [
        naming.character
        for start in range(0, len(faces), QUERY_CHUNK)
        for naming in name_exactly(gallery, faces.embeddings[start : start + QUERY_CHUNK], 1, 0)
    ]


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def known_face_outcomes(gallery: Gallery, faces: EmbeddedSplit) -> dict:
    named = verdicts(gallery, faces)
    right = sum(name == label for name, label in zip(named, faces.labels, strict=True))
    unknown = sum(name is None for name in named)
    total = len(named)
    return {
        "named_right": _share(right, total),
        "called_unknown": _share(unknown, total),
        "named_wrong": _share(total - right - unknown, total),
        "faces": total,
    }


def unknown_face_outcomes(gallery: Gallery, faces: EmbeddedSplit) -> dict:
    named = verdicts(gallery, faces)
    unknown = sum(name is None for name in named)
    total = len(named)
    return {
        "called_unknown": _share(unknown, total),
        "named": _share(total - unknown, total),
        "faces": total,
    }


def _calibration_summary(calibration: Calibration) -> dict:
    return {
        "threshold": calibration.threshold,
        "method": calibration.method,
        "val_false_reject": calibration.false_reject,
        "val_false_accept": calibration.false_accept,
    }


def naming_report(
    train: EmbeddedSplit,
    val: EmbeddedSplit,
    test: EmbeddedSplit,
    holdout: EmbeddedSplit,
    embedder: str,
) -> dict:
    """``test``: outcomes for faces of trained characters; ``open_set``: for faces of
    characters never trained on (absent without held-out characters).

    A test face whose character has no face in the gallery (every training image of it
    unreadable) cannot be named right: it is an unknown face to ``identify``, so it is
    counted in ``test_characters_not_in_gallery`` as the open set is, not in ``test``."""
    gallery = gallery_calibrated_on_val(train, val, embedder)
    in_gallery = np.isin(test.labels, np.unique(train.labels))
    report = {
        "calibration": _calibration_summary(gallery.calibration),
        "test": known_face_outcomes(gallery, test.where(in_gallery)),
    }
    if not in_gallery.all():
        report["test_characters_not_in_gallery"] = unknown_face_outcomes(
            gallery, test.where(~in_gallery)
        )
    if len(holdout):
        report["open_set"] = unknown_face_outcomes(gallery, holdout)
    return report
