"""The figures: valid PNGs, the right colours where colour carries meaning, sensible 2-D maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anime_face_id.plots import (
    RIGHT,
    TSNE_MIN_POINTS,
    WRONG,
    GridRow,
    character_styles,
    plot_embedding_map,
    plot_per_character,
    plot_retrieval_grid,
    plot_training_curves,
    project_2d,
)


def clusters(count_per_class: int, classes: int = 3, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 5
    labels = np.repeat(np.arange(classes), count_per_class)
    return centres[labels] + rng.normal(size=(len(labels), dim)) * 0.3, labels


def png(path: Path) -> Image.Image:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    return Image.open(path).convert("RGB")


def has_colour(image: Image.Image, colour: tuple[float, float, float], tolerance: int = 12) -> bool:
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    target = np.round(np.asarray(colour) * 255).astype(int)
    return bool((np.abs(pixels - target).max(axis=1) <= tolerance).sum() > 50)


@pytest.mark.parametrize("count_per_class", [4, 12])  # PCA below TSNE_MIN_POINTS, t-SNE above
def test_the_2d_map_keeps_separated_characters_apart(count_per_class):
    embeddings, labels = clusters(count_per_class)
    points, method = project_2d(embeddings, seed=0)
    assert points.shape == (len(labels), 2) and np.isfinite(points).all()
    assert method == ("t-SNE" if len(labels) >= TSNE_MIN_POINTS else "PCA")
    for label in range(3):
        own = points[labels == label]
        others = points[labels != label]
        nearest_other = np.min(np.linalg.norm(own[:, None] - others[None], axis=2))
        spread = np.max(np.linalg.norm(own - own.mean(axis=0), axis=1))
        assert nearest_other > spread  # every cluster sits apart from the others


def test_the_2d_map_copes_with_one_or_two_points():
    assert project_2d(np.ones((1, 5)))[0].shape == (1, 2)
    points, method = project_2d(np.eye(2, 5))
    assert points.shape == (2, 2) and method == "PCA" and np.isfinite(points).all()


def test_characters_get_distinct_styles_even_forty_of_them():
    for count in (4, 12, 40):
        names = [f"character {i:02d}" for i in range(count)]
        styles = character_styles(names)
        assert len(set(styles.values())) == count
    ten = character_styles([f"c{i}" for i in range(10)])
    assert len({colour for colour, _ in ten.values()}) == 10


def test_embedding_map_png(tmp_path):
    embeddings, labels = clusters(8)
    points, method = project_2d(embeddings)
    names = [f"Character {label}" for label in labels]
    path = plot_embedding_map(points, names, method, tmp_path / "map.png", "Validation")
    assert path == tmp_path / "map.png"
    image = png(path)
    assert image.width > 600 and image.height > 400
    assert not list(tmp_path.glob(".tmp-*"))


def face(tmp_path: Path, name: str, colour: tuple[int, int, int]) -> Path:
    path = tmp_path / f"{name}.png"
    Image.new("RGB", (80, 80), colour).save(path)
    return path


def test_retrieval_grid_frames_right_green_and_wrong_red(tmp_path):
    grey = face(tmp_path, "grey", (128, 128, 128))
    blue = face(tmp_path, "blue", (30, 60, 200))
    all_right = [GridRow(grey, "Aoi", [(blue, "Aoi", 0.9), (blue, "Aoi", 0.8)])]
    image = png(plot_retrieval_grid(all_right, tmp_path / "right.png", "grid"))
    assert has_colour(image, RIGHT) and not has_colour(image, WRONG)

    mixed = [*all_right, GridRow(blue, "Beni", [(grey, "Aoi", 0.7), (blue, "Beni", 0.6)])]
    image = png(plot_retrieval_grid(mixed, tmp_path / "mixed.png", "grid"))
    assert has_colour(image, RIGHT) and has_colour(image, WRONG)
    assert image.height > 1.5 * png(tmp_path / "right.png").height  # one row per query


def test_per_character_chart_png(tmp_path):
    rows = [
        {"character": f"Character {i}", "queries": 5, "precision_at_1": i / 10, "map_at_r": i / 12}
        for i in range(8)
    ]
    image = png(plot_per_character(rows, tmp_path / "per.png", "per character"))
    assert image.height > 250


def test_training_curves_from_history_rows_with_gaps(tmp_path):
    history = [
        {
            "epoch": str(epoch),
            "loss": f"{1 / epoch:.3f}",
            "active_fraction": "0.5",
            "mean_positive_distance": "0.8",
            "mean_negative_distance": "1.1",
            "val_precision_at_1": "" if epoch == 1 else "0.7",  # no val score: a gap
            "val_map_at_r": "0.4",
        }
        for epoch in range(1, 6)
    ]
    image = png(plot_training_curves(history, tmp_path / "curves.png"))
    assert image.width > 2 * image.height
