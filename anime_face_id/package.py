"""The package stage: the identifier's gallery (``models/gallery.npz``, the training split's
embeddings with the unknown-face threshold calibrated on val) and its summary
(``metrics/package.json``). The flow (flows/package.py) then logs embedder, gallery and
detector as one MLflow model; the gallery's search, persistence and calibration are in
``gallery``.
"""

from __future__ import annotations

from pathlib import Path

from anime_face_id.config import Params
from anime_face_id.embedding_store import PathEmbedder
from anime_face_id.fileio import atomic_write_json, json_safe
from anime_face_id.gallery import GALLERY, describe, rebuild_gallery

PACKAGE_METRICS = Path("metrics/package.json")


def package_gallery(
    root: Path, params: Params, checkpoint: Path, embedder: PathEmbedder | None = None
) -> dict:
    """The package stage's core: rebuild ``models/gallery.npz`` and write its summary to
    ``metrics/package.json``; returns that summary. ``embedder``: see ``rebuild_gallery``."""
    root = Path(root)
    gallery, skipped = rebuild_gallery(
        root, params, root / checkpoint, root / GALLERY, embedder=embedder
    )
    summary = {
        **describe(gallery),
        "skipped_images": [{"path": p, "reason": r} for p, r in skipped.items()],
    }
    summary = json_safe(summary)
    atomic_write_json(root / PACKAGE_METRICS, summary)
    return summary
