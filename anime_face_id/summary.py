"""One table across the data stages: what became of each character's images."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from anime_face_id import layout
from anime_face_id.config import Params
from anime_face_id.fileio import read_csv


def _count(path: Path, column: str = "slug") -> Counter:
    return Counter(row[column] for row in read_csv(path)) if path.is_file() else Counter()


def dataset_summary(root: Path, params: Params) -> list[dict]:
    """Per character: images kept and URLs rejected by collect, images with a face and
    faces found by crop, curated crops after review, and rows per split."""
    root = Path(root)
    kept = _count(root / layout.RAW_MANIFEST)
    rejected = _count(root / layout.RAW_REJECTS)
    faces_rows = (
        read_csv(root / layout.FACES_MANIFEST) if (root / layout.FACES_MANIFEST).is_file() else []
    )
    faces = Counter(row["slug"] for row in faces_rows)
    with_face = Counter(slug for slug, _ in {(row["slug"], row["source"]) for row in faces_rows})
    curated = _count(root / layout.CURATED_MANIFEST)
    splits = {name: _count(root / layout.split_csv(name)) for name in layout.SPLIT_NAMES}
    balanced = _count(root / layout.BALANCED_TRAIN)
    rows = []
    for name, slug in params.slugs.items():
        rows.append(
            {
                "character": name,
                "images": kept[slug],
                "rejected_urls": rejected[slug],
                "images_with_face": with_face[slug],
                "faces": faces[slug],
                "curated": curated[slug],
                **{name_: splits[name_][slug] for name_ in layout.SPLIT_NAMES},
                "train_balanced": balanced[slug],
            }
        )
    return rows
