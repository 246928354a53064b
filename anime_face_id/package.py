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
from anime_face_id.gallery import GALLERY, NEAREST_LISTED, describe, rebuild_gallery

PACKAGE_METRICS = Path("metrics/package.json")
LEFT_OUT_PNG = Path("plots/gallery_left_out.png")
# rows of the picture, each drawn with its nearest gallery faces; the metrics list all
LEFT_OUT_SHOWN = min(24, NEAREST_LISTED)


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
    plot_left_out(root, summary["left_out_misfiled"], params.package.misfiled)
    atomic_write_json(root / PACKAGE_METRICS, summary)
    return summary


def plot_left_out(root: Path, left_out: list[dict], setting: str) -> Path:
    """``plots/gallery_left_out.png``: each face left out of the gallery as misfiled, with
    the gallery faces nearest it (red: another character than its name), for a reviewer
    to rename or reject it; a placeholder saying why when there is none."""
    from anime_face_id.plots import GridRow, plot_placeholder, plot_retrieval_grid

    path = root / LEFT_OUT_PNG
    if setting != "leave_out":
        return plot_placeholder(path, "package.misfiled is keep: every face is in the gallery.")
    if not left_out:
        return plot_placeholder(path, "No gallery face looks like another character than its name.")
    rows = [
        GridRow(
            query_path=root / face["path"],
            query_label=face["character"],
            hits=[
                (root / n["path"], n["character"], n["similarity"]) for n in face.get("nearest", [])
            ],
        )
        for face in left_out[:LEFT_OUT_SHOWN]
    ]
    # gallery.without_misfiled lists the faces most like another character first
    shown = f"the {LEFT_OUT_SHOWN} most telling of " if len(left_out) > LEFT_OUT_SHOWN else ""
    title = (
        f"Left out of the gallery: {shown}{len(left_out)} face(s) nearer another character "
        "than their name (red); rename or reject them in review"
    )
    return plot_retrieval_grid(rows, path, title, query_caption="filed as")
