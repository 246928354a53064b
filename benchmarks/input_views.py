"""Test-time views of the same trained network: does embedding each face at another input
size, zoomed in or out, or as the average of several such views name more faces right?

    python benchmarks/input_views.py PROJECT [PROJECT ...] [--json FILE]

Each PROJECT is a trained project (``benchmarks/quality.py --workdir DIR`` keeps one per
seed as ``DIR/seed-N/project``). Its checkpoint embeds every train, val and test crop once
per view; each val and test face is then named by its nearest training face (as
``anime-face-id identify`` does), both embedded the same way. The table counts the faces
named right per project and in all, next to the plain view (what every stage does today).
The README's "test-time variants" bullet comes from this script.

Views: the training input size, 176 and 192 px (training's random zoom shows faces larger
than the plain resize does: FixRes, Touvron et al. 2019), a 1.1x central zoom in, a 1.1x
zoom out onto the padding grey, and averages of those (the average of unit embeddings,
renormalised).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anime_face_id.checkpoint import load_checkpoint  # noqa: E402
from anime_face_id.dataset import read_split  # noqa: E402
from anime_face_id.embed import embed_images  # noqa: E402
from anime_face_id.imaging import load_rgb  # noqa: E402
from anime_face_id.layout import EMBEDDER  # noqa: E402
from anime_face_id.transforms import FILL_VALUE  # noqa: E402
from benchmarks.rescoring import (  # noqa: E402
    QUERY_SPLITS,
    named_right,
    nearest,
    run_comparison,
    unit_rows,
)


def zoomed(rgb: np.ndarray, factor: float) -> np.ndarray:
    """The central 1/factor of the picture (factor > 1), or the picture centred on a
    padding-grey canvas factor^-1 times its size (factor < 1)."""
    if factor == 1:
        return rgb
    height, width = rgb.shape[:2]
    if factor > 1:
        crop_h, crop_w = round(height / factor), round(width / factor)
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        return rgb[top : top + crop_h, left : left + crop_w]
    pad_h, pad_w = round(height / factor) - height, round(width / factor) - width
    canvas = np.full((height + pad_h, width + pad_w, 3), FILL_VALUE, np.uint8)
    canvas[pad_h // 2 : pad_h // 2 + height, pad_w // 2 : pad_w // 2 + width] = rgb
    return canvas


def views(image_size: int) -> dict[str, tuple[int, float]]:
    """{view: (input size, zoom)}."""
    return {
        f"plain {image_size} px (today)": (image_size, 1.0),
        "plain 176 px": (176, 1.0),
        "plain 192 px": (192, 1.0),
        "zoom in 1.1": (image_size, 1.1),
        "zoom out 1.1": (image_size, 1 / 1.1),
    }


def averages(names: list[str]) -> dict[str, list[str]]:
    """Every single view, then the plain view averaged with others."""
    plain, size_176, size_192, zoom_in, zoom_out = names
    return {
        **{name: [name] for name in names},
        "plain + 176 px": [plain, size_176],
        "plain + 192 px": [plain, size_192],
        "plain + zoom in": [plain, zoom_in],
        "plain + zoom in + zoom out": [plain, zoom_in, zoom_out],
        "all five": names,
    }


def count_project(root: Path, batch_size: int = 64) -> tuple[dict, dict[str, int]]:
    """({combination: {split: faces named right}}, {split: queries}) for one project."""
    loaded = load_checkpoint(root / EMBEDDER)
    rows = {name: read_split(root, name) for name in ("train", *QUERY_SPLITS)}
    pictures = {
        name: [np.asarray(load_rgb(root / row["path"]).convert("RGB")) for row in split]
        for name, split in rows.items()
    }
    labels = {name: np.array([row["character"] for row in split]) for name, split in rows.items()}
    table = views(loaded.image_size)
    embedded = {
        view: {
            name: unit_rows(
                embed_images(
                    loaded.model, [zoomed(p, zoom) for p in images], size, "cpu", batch_size
                ).numpy()
            )
            for name, images in pictures.items()
        }
        for view, (size, zoom) in table.items()
    }
    counts = {}
    for combination, parts in averages(list(table)).items():
        mean = {name: unit_rows(sum(embedded[p][name] for p in parts)) for name in pictures}
        counts[combination] = {
            split: named_right(nearest, mean[split], labels[split], mean["train"], labels["train"])
            for split in QUERY_SPLITS
        }
    return counts, {split: len(labels[split]) for split in QUERY_SPLITS}


def compare(roots: list[Path]) -> dict:
    """Counts shaped like ``rescoring.compare``'s, one entry per view or average."""
    per_project = [count_project(root) for root in roots]
    combinations = list(per_project[0][0])
    return {
        "projects": [str(root) for root in roots],
        "queries": {
            split: [queries[split] for _, queries in per_project] for split in QUERY_SPLITS
        },
        "right": {
            combination: {
                split: [counts[combination][split] for counts, _ in per_project]
                for split in QUERY_SPLITS
            }
            for combination in combinations
        },
    }


def main(argv: list[str] | None = None) -> None:
    run_comparison(__doc__.split("\n\n")[0], compare, "view", argv)


if __name__ == "__main__":
    main()
