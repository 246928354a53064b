"""Verification, "are these two faces one character?": the equal error rate and its threshold
from genuine scores (pairs of one character) and impostor scores (pairs of two).

A score >= threshold is accepted. ``eer_threshold`` sweeps the observed scores; ``pairwise_eer``
does it over every pair of a set, a chunk of rows at a time, so memory stays bounded: up to
``EXACT_PAIRS`` pairs their scores are kept and swept exactly, beyond that (a validation split
of some 6,300 images or more) they are counted in ``SCORE_BINS`` bins over [-1, 1], which
places the threshold to within 2 / ``SCORE_BINS`` (3e-5) instead of holding N^2 / 2 scores.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

EXACT_PAIRS = 20_000_000  # 160 MB of float64 scores
SCORE_BINS = 1 << 16
ROW_CHUNK = 1024  # rows compared with all the others at once: CHUNK x N similarities


def eer_threshold(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float, float]:
    """(threshold, false accept rate, false reject rate) where the two rates are closest.

    The rates change only at observed scores: every threshold above the next lower score
    and up to the chosen one gives the same two rates. The threshold is the middle of that
    interval, not its top: with well separated val scores the top is the lowest genuine
    score seen, and a new face of a known character scoring a hair below it would be
    called unknown."""
    genuine, impostor = np.sort(genuine), np.sort(impostor)
    thresholds = np.unique(np.concatenate([genuine, impostor]))
    false_reject = np.searchsorted(genuine, thresholds, side="left") / len(genuine)
    false_accept = 1.0 - np.searchsorted(impostor, thresholds, side="left") / len(impostor)
    best = int(np.argmin(np.abs(false_accept - false_reject)))
    # in float64: the middle of two neighbouring float32 scores would round onto one of them
    top = float(thresholds[best])
    threshold = top if best == 0 else (float(thresholds[best - 1]) + top) / 2
    return float(threshold), float(false_accept[best]), float(false_reject[best])


def pair_scores(unit: np.ndarray, labels: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(genuine, impostor) cosine similarities of the pairs i < j, a chunk of rows at a time."""
    count = len(unit)
    columns = np.arange(count)
    for start in range(0, count, ROW_CHUNK):
        rows = np.arange(start, min(start + ROW_CHUNK, count))
        similarity = unit[rows] @ unit.T
        later = columns[None, :] > rows[:, None]
        same = labels[rows, None] == labels[None, :]
        yield similarity[later & same], similarity[later & ~same]


def pairwise_eer(unit: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(EER, threshold) over every pair of unit rows; (NaN, NaN) without genuine or without
    impostor pairs."""
    count = len(unit)
    if count * (count - 1) // 2 > EXACT_PAIRS:
        return _binned_eer(pair_scores(unit, labels))
    parts = list(pair_scores(unit, labels))
    genuine = np.concatenate([g for g, _ in parts]) if parts else np.zeros(0)
    impostor = np.concatenate([i for _, i in parts]) if parts else np.zeros(0)
    if not len(genuine) or not len(impostor):
        return float("nan"), float("nan")
    threshold, false_accept, false_reject = eer_threshold(genuine, impostor)
    return (false_accept + false_reject) / 2, threshold


def _binned_eer(chunks: Iterator[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    edges = np.linspace(-1.0, 1.0, SCORE_BINS + 1)
    genuine = np.zeros(SCORE_BINS, dtype=np.int64)
    impostor = np.zeros(SCORE_BINS, dtype=np.int64)
    for genuine_scores, impostor_scores in chunks:
        genuine += np.histogram(np.clip(genuine_scores, -1.0, 1.0), edges)[0]
        impostor += np.histogram(np.clip(impostor_scores, -1.0, 1.0), edges)[0]
    if not genuine.sum() or not impostor.sum():
        return float("nan"), float("nan")
    # a threshold at a bin's lower edge accepts that bin and every one above it
    false_reject = (np.cumsum(genuine) - genuine) / genuine.sum()
    false_accept = 1.0 - (np.cumsum(impostor) - impostor) / impostor.sum()
    observed = np.flatnonzero(genuine + impostor)
    chosen = int(np.argmin(np.abs(false_accept[observed] - false_reject[observed])))
    best = observed[chosen]
    # as eer_threshold: the middle of the gap down to the next lower bin holding scores
    below = edges[observed[chosen - 1] + 1] if chosen else edges[best]
    threshold = (float(below) + float(edges[best])) / 2
    return float((false_accept[best] + false_reject[best]) / 2), float(threshold)
