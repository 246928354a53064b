"""Evaluate's figures and tables under plots/: the embedding map, the retrieval grid,
per-character scores, the most-confused pairs and the training curves. A figure that cannot
be drawn (too little data) is a placeholder saying why."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anime_face_id.config import EvaluateConfig
from anime_face_id.evaluation_data import EmbeddedSplit
from anime_face_id.fileio import read_csv, write_csv
from anime_face_id.plots import (
    GridRow,
    plot_embedding_map,
    plot_per_character,
    plot_placeholder,
    plot_retrieval_grid,
    plot_training_curves,
    project_2d,
)
from anime_face_id.training_report import TRAIN_HISTORY

PLOTS_DIR = Path("plots")
# t-SNE of more points takes minutes and draws nothing more legible: a larger val split is
# mapped through a seeded sample of this many images.
MAP_POINTS = 3000


EMBEDDING_MAP_PNG = PLOTS_DIR / "embedding_map.png"


EMBEDDING_MAP_CSV = PLOTS_DIR / "embedding_map.csv"


RETRIEVAL_GRID_PNG = PLOTS_DIR / "retrieval_grid.png"


PER_CHARACTER_CSV = PLOTS_DIR / "per_character.csv"


PER_CHARACTER_PNG = PLOTS_DIR / "per_character.png"


CONFUSED_PAIRS_CSV = PLOTS_DIR / "confused_pairs.csv"


LOSS_CURVES_PNG = PLOTS_DIR / "loss_curves.png"


GRID_NEIGHBOURS = 5


CONFUSED_COLUMNS = ("character_a", "character_b", "count")


EMBEDDING_MAP_COLUMNS = ("x", "y", "character", "path")


def map_sample(count: int, seed: int) -> np.ndarray:
    """Indices of the val images the embedding map shows, in val order."""
    if count <= MAP_POINTS:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, MAP_POINTS, replace=False))


def grid_rows(
    root: Path, queries: EmbeddedSplit, gallery: EmbeddedSplit, count: int, seed: int
) -> list[GridRow]:
    """``count`` queries, each of a different character while there are enough, with
    their nearest training images."""
    if not len(queries) or not len(gallery) or count == 0:
        return []
    rng = np.random.default_rng(seed)
    by_character: dict[str, list[int]] = {}
    for index, label in enumerate(queries.labels.tolist()):
        by_character.setdefault(label, []).append(index)
    characters = sorted(by_character)
    rng.shuffle(characters)
    chosen = [int(rng.choice(by_character[name])) for name in characters[:count]]
    similarity = queries.embeddings[chosen] @ gallery.embeddings.T
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :GRID_NEIGHBOURS]
    return [
        GridRow(
            query_path=root / queries.paths[q],
            query_label=str(queries.labels[q]),
            hits=[
                (root / gallery.paths[g], str(gallery.labels[g]), float(similarity[i, g]))
                for g in order[i]
            ],
        )
        for i, q in enumerate(chosen)
    ]


def write_plots(
    root: Path,
    val: EmbeddedSplit,
    gallery: EmbeddedSplit,
    per_character: list[dict],
    pairs: list[dict],
    config: EvaluateConfig,
) -> list[str]:
    """Every figure and table; a figure that cannot be drawn (too little data) is a
    placeholder saying why. Returns the paths of the real figures and tables."""
    written = []
    per_character_columns = tuple(per_character[0]) if per_character else ("character",)
    write_csv(root / PER_CHARACTER_CSV, per_character_columns, per_character)
    write_csv(root / CONFUSED_PAIRS_CSV, CONFUSED_COLUMNS, pairs)
    written += [PER_CHARACTER_CSV, CONFUSED_PAIRS_CSV]
    if per_character:
        plot_per_character(
            per_character, root / PER_CHARACTER_PNG, "Retrieval within val, per character"
        )
        written.append(PER_CHARACTER_PNG)
    else:
        plot_placeholder(root / PER_CHARACTER_PNG, "No character has two validation images.")
    map_rows = []
    if len(val) >= 2:
        shown = map_sample(len(val), config.seed)
        points, method = project_2d(val.embeddings[shown], config.seed)
        labels, paths = val.labels[shown], [val.paths[i] for i in shown]
        map_rows = [
            {"x": f"{x:.4f}", "y": f"{y:.4f}", "character": label, "path": path}
            for (x, y), label, path in zip(points, labels, paths, strict=True)
        ]
        title = "Validation embeddings"
        if len(shown) < len(val):
            title += f" ({len(shown)} of {len(val)}, drawn at random)"
        plot_embedding_map(points, labels.tolist(), method, root / EMBEDDING_MAP_PNG, title)
        written += [EMBEDDING_MAP_CSV, EMBEDDING_MAP_PNG]
    else:
        plot_placeholder(root / EMBEDDING_MAP_PNG, "Fewer than two validation images.")
    write_csv(root / EMBEDDING_MAP_CSV, EMBEDDING_MAP_COLUMNS, map_rows)
    rows = grid_rows(root, val, gallery, config.grid_queries, config.seed)
    if rows:
        plot_retrieval_grid(
            rows,
            root / RETRIEVAL_GRID_PNG,
            f"Validation queries and their {GRID_NEIGHBOURS} nearest training images\n"
            "green: same character, red: another; number: cosine similarity",
        )
        written.append(RETRIEVAL_GRID_PNG)
    else:
        plot_placeholder(root / RETRIEVAL_GRID_PNG, "No validation images to query with.")
    history_path = root / TRAIN_HISTORY
    history = read_csv(history_path) if history_path.is_file() else []
    if history:
        plot_training_curves(history, root / LOSS_CURVES_PNG)
        written.append(LOSS_CURVES_PNG)
    else:
        plot_placeholder(root / LOSS_CURVES_PNG, f"No training history ({TRAIN_HISTORY}).")
    return [Path(path).as_posix() for path in written]
