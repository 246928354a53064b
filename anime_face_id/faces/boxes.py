"""Box geometry for face crops: widen, square, keep inside the image, cut, compare.

Boxes are ``(x, y, w, h)`` in pixels with x along the columns (width) and y along the rows
(height), so a numpy image is always indexed ``image[y:y + h, x:x + w]``. The original
project indexed ``image[x:x + w, y:y + h]``; keeping the indexing in one function here
(``crop_square``) is what makes that mistake impossible elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

Box = tuple[float, float, float, float]  # x, y, w, h


def _pixel_bounds(box: Box, image_w: int, image_h: int) -> tuple[int, int, int, int]:
    """The integer pixel rectangle that encloses ``box``, clipped to the image."""
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise ValueError(f"box {tuple(box)} has no area")
    left, top = max(0, math.floor(x)), max(0, math.floor(y))
    right, bottom = min(image_w, math.ceil(x + w)), min(image_h, math.ceil(y + h))
    if right <= left or bottom <= top:
        raise ValueError(f"box {tuple(box)} lies outside the {image_w}x{image_h} image")
    return left, top, right - left, bottom - top


def check_box_inside(box: Sequence[float], image_w: int, image_h: int) -> None:
    """Refuse (ValueError saying why) a box that is not wholly inside the image.

    Manual boxes go through this, when the review app records one and again when the
    review stage cuts it: a box reaching beyond the picture was mistyped or drawn for
    another picture, and clipping it quietly would crop something the reviewer never saw.
    """
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise ValueError("the box needs a positive width and height")
    if x < 0 or y < 0 or x + w > image_w or y + h > image_h:
        raise ValueError(f"the box {x},{y},{w},{h} does not fit in the {image_w}x{image_h} image")


def _place(start: int, side: int, limit: int) -> int:
    """Shift a span of ``side`` pixels starting at ``start`` so that it lies in [0, limit)."""
    return min(max(start, 0), limit - side)


def square_crop_box(box: Box, image_w: int, image_h: int, margin: float) -> tuple[int, int, int]:
    """The square ``(x, y, side)`` to cut around a face box.

    The box is widened by ``margin`` times its width and height on each side (hair is the
    strongest identity cue in anime, and the cascade's boxes stop at the fringe), made square
    around its centre, and shifted inside the image rather than clipped so every crop keeps
    its aspect ratio; only when the square is larger than the image's short side does it
    shrink to that side.
    """
    if image_w < 1 or image_h < 1:
        raise ValueError(f"image size {image_w}x{image_h} is empty")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    x, y, w, h = _pixel_bounds(box, image_w, image_h)
    wanted = math.ceil(max(w, h) * (1.0 + 2.0 * margin) - 1e-9)
    side = max(1, min(wanted, image_w, image_h))
    # Integer centring: floor((w - side) / 2) keeps the box inside the square whenever
    # side >= max(w, h), which a float centre rounded to pixels would not guarantee.
    left = _place(x + (w - side) // 2, side, image_w)
    top = _place(y + (h - side) // 2, side, image_h)
    return left, top, side


def crop_square(rgb: np.ndarray, x: int, y: int, side: int, size: int) -> np.ndarray:
    """Cut the square at column ``x``, row ``y`` and resize it to ``size`` x ``size``."""
    if rgb.ndim != 3:
        raise ValueError(f"expected an H x W x C image, got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    if side < 1 or size < 1:
        raise ValueError(f"side and size must be positive, got {side} and {size}")
    if x < 0 or y < 0 or x + side > width or y + side > height:
        raise ValueError(f"square ({x}, {y}, {side}) is not inside the {width}x{height} image")
    region = rgb[y : y + side, x : x + side]
    if side == size:
        return np.ascontiguousarray(region)
    # INTER_AREA averages when shrinking (no aliasing); cubic keeps edges when enlarging.
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(region), (size, size), interpolation=interpolation)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter_w = min(ax + aw, bx + bw) - max(ax, bx)
    inter_h = min(ay + ah, by + bh) - max(ay, by)
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    inter = inter_w * inter_h
    union = aw * ah + bw * bh - inter
    return float(inter / union) if union > 0 else 0.0


def from_yolo(cx: float, cy: float, w: float, h: float, image_w: int, image_h: int) -> Box:
    """A YOLO label's normalised centre box in pixels."""
    return ((cx - w / 2) * image_w, (cy - h / 2) * image_h, w * image_w, h * image_h)


def matched(truths: Sequence[Box], found: Sequence[Box], threshold: float = 0.5) -> int:
    """How many ground-truth boxes a detection overlaps with IoU >= ``threshold``.

    Greedy one-to-one matching, best pairs first, so one detection cannot count for two
    faces.
    """
    return len(matched_truths(truths, found, threshold))


def matched_truths(truths: Sequence[Box], found: Sequence[Box], threshold: float = 0.5) -> set[int]:
    """The indices of the ground-truth boxes ``matched`` counts."""
    pairs = sorted(
        ((iou(t, f), ti, fi) for ti, t in enumerate(truths) for fi, f in enumerate(found)),
        reverse=True,
    )
    used_truths: set[int] = set()
    used_found: set[int] = set()
    for overlap, ti, fi in pairs:
        if overlap < threshold:
            break
        if ti not in used_truths and fi not in used_found:
            used_truths.add(ti)
            used_found.add(fi)
    return used_truths


def recall_precision(
    pictures: Iterable[tuple[Sequence[Box], Sequence[Box]]], threshold: float = 0.5
) -> tuple[float, float]:
    """Recall and precision at IoU ``threshold`` over ``(truths, found)`` per picture
    (one-to-one matching as ``matched``; 0 where nothing was labelled or found)."""
    hits = truths = found = 0
    for picture_truths, picture_found in pictures:
        hits += matched(picture_truths, picture_found, threshold)
        truths += len(picture_truths)
        found += len(picture_found)
    return hits / max(truths, 1), hits / max(found, 1)


def recall_by_width(
    pictures: Iterable[tuple[Sequence[Box], Sequence[Box]]],
    edges: Sequence[float],
    threshold: float = 0.5,
) -> list[tuple[int, int]]:
    """(faces found, faces) per band of labelled width: below ``edges[0]``, between each
    pair of edges, and from the last edge up (matching as ``matched``)."""
    bands = [[0, 0] for _ in range(len(edges) + 1)]
    for truths, found in pictures:
        hits = matched_truths(truths, found, threshold)
        for index, truth in enumerate(truths):
            band = bands[sum(truth[2] >= edge for edge in edges)]
            band[1] += 1
            band[0] += index in hits
    return [(hits, total) for hits, total in bands]
