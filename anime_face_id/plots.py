"""Figures of the evaluate stage, written as PNG files (atomically).

Matplotlib's object API (``Figure``) is used instead of pyplot: no global figure state,
no GUI backend, safe in worker threads; PNGs are rendered by the Agg canvas.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from anime_face_id.fileio import atomic_write_bytes
from anime_face_id.imaging import load_rgb

RIGHT = (0.13, 0.65, 0.24)  # green border: retrieved the query's character
WRONG = (0.84, 0.15, 0.16)  # red border: someone else
TSNE_MIN_POINTS = 20  # below this t-SNE's neighbourhoods are meaningless: PCA instead
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
THUMBNAIL = 112  # pixels per image in the retrieval grid


def save_figure(figure: Figure, path: Path, dpi: int = 110) -> Path:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_placeholder(path: Path, message: str) -> Path:
    """A figure that says why the real one could not be drawn (too little data), so
    the file a pipeline declares always exists and never shows a stale picture."""
    figure = Figure(figsize=(6, 2))
    axes = figure.add_subplot()
    axes.axis("off")
    axes.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11)
    return save_figure(figure, path)


def character_styles(names: Sequence[str]) -> dict[str, tuple[tuple[float, ...], str]]:
    """A distinct (colour, marker) per name: tab20 for up to 20, then evenly spaced hues
    combined with changing markers, so 40 characters stay tellable apart."""
    names = sorted(set(names))
    if len(names) <= 20:
        # tab20 comes in dark/light pairs of one hue: take the dark ones first so that up
        # to 10 characters get 10 different hues
        palette = colormaps["tab20"]
        order = [*range(0, 20, 2), *range(1, 20, 2)]
        return {name: (palette(order[i]), "o") for i, name in enumerate(names)}
    styles = {}
    for i, name in enumerate(names):
        hue = (i * 0.618033988749895) % 1.0  # golden-ratio steps spread hues evenly
        colour = tuple(hsv_to_rgb((hue, 0.75, 0.85 if i % 2 else 0.6)))
        styles[name] = (colour, MARKERS[i % len(MARKERS)])
    return styles


# --------------------------------------------------------------------- embedding map


def project_2d(embeddings: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 2) coordinates and the method: t-SNE with enough points, else PCA."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    count = len(embeddings)
    if count >= TSNE_MIN_POINTS:
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (count - 1) / 3.0)
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return tsne.fit_transform(embeddings), "t-SNE"
    centred = embeddings - embeddings.mean(axis=0, keepdims=True)
    if count < 2:
        return np.zeros((count, 2)), "PCA"
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T
    if points.shape[1] < 2:  # one-dimensional data: pad the missing axis
        points = np.hstack([points, np.zeros((count, 2 - points.shape[1]))])
    return points, "PCA"


def plot_embedding_map(
    points: np.ndarray, labels: Sequence[str], method: str, path: Path, title: str
) -> Path:
    styles = character_styles(labels)
    figure = Figure(figsize=(9.5, 7))
    axes = figure.add_subplot()
    labels_array = np.asarray(labels)
    for name, (colour, marker) in styles.items():
        chosen = labels_array == name
        axes.scatter(
            points[chosen, 0],
            points[chosen, 1],
            s=28,
            color=colour,
            marker=marker,
            label=f"{name} ({int(chosen.sum())})",
            edgecolors="white",
            linewidths=0.4,
        )
    axes.set_title(f"{title} ({method}, {len(points)} images)")
    axes.set_xticks([])
    axes.set_yticks([])
    columns = 1 if len(styles) <= 20 else 2
    axes.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
        ncol=columns,
        markerscale=1.2,
    )
    return save_figure(figure, path)


# --------------------------------------------------------------------- retrieval grid


@dataclass
class GridRow:
    query_path: Path
    query_label: str
    hits: list[tuple[Path, str, float]]  # (image, character, cosine similarity), best first


def _framed(path: Path, colour: tuple[float, float, float] | None, size: int) -> np.ndarray:
    image = np.asarray(load_rgb(path).resize((size, size)))
    if colour is None:
        return image
    border = max(3, size // 22)
    framed = np.empty((size + 2 * border, size + 2 * border, 3), dtype=np.uint8)
    framed[:] = np.asarray(colour) * 255
    framed[border:-border, border:-border] = image
    return framed


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def plot_retrieval_grid(
    rows: Sequence[GridRow], path: Path, title: str, query_caption: str = "query"
) -> Path:
    """One row per query: the query (``query_caption`` above its character's name), then
    its nearest neighbours framed green (same character) or red (another), each named
    with its similarity underneath."""
    columns = 1 + max((len(row.hits) for row in rows), default=0)
    height = 2.05 * max(len(rows), 1)
    figure = Figure(figsize=(1.75 * columns, height + 0.5))
    figure.suptitle(title, fontsize=10, y=1 - 0.1 / (height + 0.5))
    for r, row in enumerate(rows):
        axes = figure.add_subplot(len(rows), columns, r * columns + 1)
        axes.imshow(_framed(row.query_path, None, THUMBNAIL))
        axes.set_xlabel(
            f"{query_caption}\n{_short(row.query_label)}", fontsize=8, fontweight="bold"
        )
        _bare(axes)
        for c, (hit_path, hit_label, similarity) in enumerate(row.hits, start=2):
            axes = figure.add_subplot(len(rows), columns, r * columns + c)
            colour = RIGHT if hit_label == row.query_label else WRONG
            axes.imshow(_framed(hit_path, colour, THUMBNAIL))
            axes.set_xlabel(f"{_short(hit_label)}\n{similarity:.2f}", fontsize=8, color=colour)
            _bare(axes)
    figure.subplots_adjust(wspace=0.08, hspace=0.45, top=1 - 0.6 / (height + 0.5))
    return save_figure(figure, path)


def _bare(axes) -> None:
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_visible(False)


# --------------------------------------------------------------------- per character


def plot_per_character(rows: Sequence[dict], path: Path, title: str) -> Path:
    """Horizontal bars of precision@1 and MAP@R per character, worst MAP@R at the top."""
    ordered = sorted(rows, key=lambda row: (row["map_at_r"], row["character"]), reverse=True)
    names = [f"{_short(row['character'], 28)} ({row['queries']})" for row in ordered]
    positions = np.arange(len(ordered))
    height = 0.4
    figure = Figure(figsize=(8, 1.2 + 0.32 * max(len(ordered), 1)))
    axes = figure.add_subplot()
    axes.barh(
        positions + height / 2,
        [row["precision_at_1"] for row in ordered],
        height,
        label="precision@1",
        color="#4c72b0",
    )
    axes.barh(
        positions - height / 2,
        [row["map_at_r"] for row in ordered],
        height,
        label="MAP@R",
        color="#dd8452",
    )
    axes.set_yticks(positions, names, fontsize=8)
    axes.set_xlim(0, 1)
    axes.set_xlabel("score (number of queries in brackets)")
    axes.grid(axis="x", alpha=0.3)
    axes.set_title(title)
    axes.legend(loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8, frameon=False)
    return save_figure(figure, path)


# --------------------------------------------------------------------- training curves


def _column(rows: Sequence[dict[str, str]], name: str) -> np.ndarray:
    values = []
    for row in rows:
        text = row.get(name, "")
        values.append(float(text) if text not in ("", None) else math.nan)
    return np.asarray(values)


def plot_training_curves(history: Sequence[dict[str, str]], path: Path) -> Path:
    """From plots/train_history.csv: loss, triplet distances, validation scores."""
    epochs = _column(history, "epoch")
    figure = Figure(figsize=(13, 3.8))
    loss_axes, distance_axes, val_axes = figure.subplots(1, 3)

    loss_axes.plot(epochs, _column(history, "loss"), marker="o", ms=3, label="loss")
    loss_axes.plot(
        epochs, _column(history, "active_fraction"), marker="o", ms=3, label="active fraction"
    )
    loss_axes.set_title("training loss")

    distance_axes.plot(
        epochs, _column(history, "mean_positive_distance"), marker="o", ms=3, label="positive"
    )
    distance_axes.plot(
        epochs, _column(history, "mean_negative_distance"), marker="o", ms=3, label="negative"
    )
    distance_axes.set_title("hardest pair distances")

    val_axes.plot(
        epochs, _column(history, "val_precision_at_1"), marker="o", ms=3, label="precision@1"
    )
    val_axes.plot(epochs, _column(history, "val_map_at_r"), marker="o", ms=3, label="MAP@R")
    val_axes.set_ylim(0, 1.02)
    val_axes.set_title("validation retrieval")

    for axes in (loss_axes, distance_axes, val_axes):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)
