"""Training views for the face detector: labelled frames, random scale and crop, pasted
illustration faces, and the CenterNet targets drawn from the boxes.

Boxes are ``x, y, w, h`` in pixels of the array they belong to, as everywhere in
``anime_face_id.faces``.
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from anime_face_id.errors import StageError
from anime_face_id.faces.boxes import from_yolo
from anime_face_id.faces.centernet import STRIDE
from anime_face_id.imaging import ImageRejected, load_rgb_array
from anime_face_id.transforms import FILL_VALUE, AugmentSettings, normalise, random_colour

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Identity crops are cut with a margin around the face (the crop stage widens the box by
# crop.margin on each side); without a detector to label them (the first training run) the
# face is taken as this centred share of the crop's side.
PASTED_FACE_SHARE = 0.65
# Identity crops are framed anywhere from a close-up to the head and shoulders, so a fixed
# share mislabels many. A trained detector labels them instead, on the crop set in the
# middle of a canvas this many times its side (a close-up face is then of a size it knows).
PSEUDO_LABEL_CANVAS = 2.0
# CenterNet draws each face as a Gaussian; TTFNet's elliptical one (sigma = alpha * side / 6)
# follows the box's aspect ratio.
GAUSSIAN_ALPHA = 0.54
# TTFNet also regresses each box from every cell of the face's central area (this share of
# its width and height), not only from its centre cell: many more box samples per face.
BOX_AREA_SHARE = 0.54
# A frame's longest side in a training view, as a share of the view's side: 213-533 px in
# the shipped weights' 320 px views (the detector sees 512 px pictures).
FRAME_SCALE = (2 / 3, 5 / 3)
COLOUR = AugmentSettings(
    brightness=0.3, contrast=0.3, saturation=0.4, max_hue_shift_deg=20.0, greyscale_probability=0.1
)


class DetectorDataError(StageError):
    """The training frames cannot teach a detector as they are."""


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    boxes: np.ndarray  # (N, 4) float32, pixels


@dataclass(frozen=True)
class FaceCrop:
    """An identity crop and its face: ``box`` as shares of the crop's width and height."""

    path: Path
    box: tuple[float, float, float, float]


def centred_face(path: Path) -> FaceCrop:
    inset = (1 - PASTED_FACE_SHARE) / 2
    return FaceCrop(path, (inset, inset, PASTED_FACE_SHARE, PASTED_FACE_SHARE))


def pseudo_label(path: Path, detect, min_score: float) -> FaceCrop | None:
    """The crop's best face by ``detect`` (an RGB array -> ``(x, y, w, h, score)`` list), found
    with the crop centred on a larger canvas; None when no face scores ``min_score``."""
    rgb = load_rgb_array(path)
    height, width = rgb.shape[:2]
    side = round(max(height, width) * PSEUDO_LABEL_CANVAS)
    left, top = (side - width) // 2, (side - height) // 2
    canvas = np.full((side, side, 3), FILL_VALUE, dtype=np.uint8)
    canvas[top : top + height, left : left + width] = rgb
    found = [f for f in detect(canvas) if f[4] >= min_score]
    if not found:
        return None
    x, y, w, h, _score = max(found, key=lambda f: f[4])
    x0, y0 = max(x - left, 0.0), max(y - top, 0.0)
    x1, y1 = min(x - left + w, width), min(y - top + h, height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return FaceCrop(path, (x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height))


@dataclass(frozen=True)
class LeftOut:
    """A picture a training run does without, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class LabelledFrames:
    items: list[LabelledImage]
    left_out: list[LeftOut]  # unreadable pictures, label files that are not YOLO face labels
    orphan_labels: int  # label files with no picture of their name


def read_labelled_frames(folder: Path, workers: int | None = None) -> LabelledFrames:
    """``folder/images/*`` with ``folder/labels/<stem>.txt`` (``0 cx cy w h`` normalised).

    A picture without a label file has no faces (a valid negative). Every picture is
    decoded once here, as training will see it (EXIF orientation applied), so that a
    truncated file is left out now, with its reason, instead of stopping a run hours in;
    so is a picture whose label file is not one face per line (class 0, finite
    coordinates, centre inside the picture, size in (0, 1]). A folder whose labels match
    none of its pictures is a StageError: every face would be taught as background.
    """
    images_dir, labels_dir = folder / "images", folder / "labels"
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DetectorDataError(f"no pictures in {images_dir} ({', '.join(IMAGE_SUFFIXES)})")
    if not labels_dir.is_dir():
        raise DetectorDataError(
            f"{folder} has no labels/ folder (YOLO labels <picture name>.txt): without "
            "them every face would be taught as background"
        )
    labels = {p.stem: p for p in labels_dir.glob("*.txt")}
    if not labels.keys() & {image.stem for image in images}:
        raise DetectorDataError(
            f"none of the {len(labels)} label files in {labels_dir} is named after a picture "
            f"in {images_dir} (<picture name>.txt): every face would be taught as background"
        )
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        read = list(pool.map(lambda image: _labelled(image, labels.get(image.stem)), images))
    return LabelledFrames(
        items=[item for item in read if isinstance(item, LabelledImage)],
        left_out=[item for item in read if isinstance(item, LeftOut)],
        orphan_labels=len(labels.keys() - {image.stem for image in images}),
    )


def read_yolo_folder(folder: Path) -> list[LabelledImage]:
    """The usable labelled pictures of ``read_labelled_frames``."""
    return read_labelled_frames(folder).items


def _labelled(image: Path, label: Path | None) -> LabelledImage | LeftOut:
    try:
        height, width = load_rgb_array(image).shape[:2]
    except ImageRejected as error:
        return LeftOut(image, error.reason)
    try:
        boxes = [] if label is None else _face_boxes(label, width, height)
    except ValueError as error:
        return LeftOut(image, str(error))
    return LabelledImage(image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4))


def _face_boxes(label: Path, width: int, height: int) -> list[tuple[float, ...]]:
    """The boxes of a YOLO label file, in pixels; a ValueError names the first bad line."""
    try:
        text = label.read_bytes().decode("utf-8")
    except OSError as error:
        raise ValueError(f"{label.name}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{label.name}: not UTF-8 text") from None
    boxes = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                boxes.append(from_yolo(*_yolo_face(line), width, height))
            except ValueError as error:
                raise ValueError(f"{label.name} line {number}: {error}") from None
    return boxes


def _yolo_face(line: str) -> tuple[float, float, float, float]:
    fields = line.split()
    if len(fields) != 5:
        raise ValueError(f"{len(fields)} fields, not 5 (class cx cy w h)")
    if fields[0] != "0":
        raise ValueError(f"class {fields[0][:20]!r}: only class 0 (a face) is known")
    try:
        cx, cy, w, h = (float(field) for field in fields[1:])
    except ValueError:
        raise ValueError("a coordinate is not a number") from None
    if not all(math.isfinite(v) for v in (cx, cy, w, h)):
        raise ValueError("a coordinate is not finite")
    if not (0 <= cx <= 1 and 0 <= cy <= 1):
        raise ValueError(f"centre ({cx:g}, {cy:g}) outside the picture (0 to 1)")
    if not (0 < w <= 1 and 0 < h <= 1):
        raise ValueError(f"size {w:g} x {h:g} not in (0, 1]")
    return cx, cy, w, h


def split_validation(
    items: list[LabelledImage], fraction: float
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Hold out about ``fraction`` of the pictures, chosen by a hash of the file name so the
    split never changes when pictures are added or the order differs."""

    def held_out(item: LabelledImage) -> bool:
        digest = hashlib.sha256(item.path.name.encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32 < fraction

    return [i for i in items if not held_out(i)], [i for i in items if held_out(i)]


def random_view(
    rgb: np.ndarray,
    boxes: np.ndarray,
    rng: np.random.Generator,
    size: int,
    longest_side: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` view: the picture scaled so its longest side is drawn
    log-uniformly from ``longest_side``, placed at random (cut or padded), maybe mirrored.

    Faces whose centre leaves the view are dropped; the others are clipped to it.
    """
    height, width = rgb.shape[:2]
    target = math.exp(rng.uniform(math.log(longest_side[0]), math.log(longest_side[1])))
    scale = target / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)
    # Place the picture at (left, top) on the canvas; negative means cut.
    left = int(rng.integers(min(0, size - new_w), max(0, size - new_w) + 1))
    top = int(rng.integers(min(0, size - new_h), max(0, size - new_h) + 1))
    canvas = np.full((size, size, 3), FILL_VALUE, dtype=np.uint8)
    src_x, src_y = max(0, -left), max(0, -top)
    dst_x, dst_y = max(0, left), max(0, top)
    span_w = min(new_w - src_x, size - dst_x)
    span_h = min(new_h - src_y, size - dst_y)
    canvas[dst_y : dst_y + span_h, dst_x : dst_x + span_w] = resized[
        src_y : src_y + span_h, src_x : src_x + span_w
    ]
    moved = boxes * scale
    moved[:, 0] += left
    moved[:, 1] += top
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1].copy()
        moved[:, 0] = size - moved[:, 0] - moved[:, 2]
    return canvas, clip_boxes(moved, size)


def clip_boxes(boxes: np.ndarray, size: int) -> np.ndarray:
    """Keep boxes whose centre is on the ``size`` x ``size`` canvas, clipped to it."""
    centre_x = boxes[:, 0] + boxes[:, 2] / 2
    centre_y = boxes[:, 1] + boxes[:, 3] / 2
    inside = (centre_x >= 0) & (centre_x < size) & (centre_y >= 0) & (centre_y < size)
    boxes = boxes[inside]
    left = np.clip(boxes[:, 0], 0, size)
    top = np.clip(boxes[:, 1], 0, size)
    right = np.clip(boxes[:, 0] + boxes[:, 2], 0, size)
    bottom = np.clip(boxes[:, 1] + boxes[:, 3], 0, size)
    clipped = np.stack([left, top, right - left, bottom - top], axis=1).astype(np.float32)
    return clipped[(clipped[:, 2] >= 2) & (clipped[:, 3] >= 2)]


def paste_faces(
    canvas: np.ndarray,
    boxes: np.ndarray,
    crops: list[FaceCrop],
    rng: np.random.Generator,
    count: int,
    side_range: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``count`` face crops (illustrations) at random sizes and places.

    Frames are not illustrations; pasted crops show the detector the drawing styles users
    scrape. A pasted crop hides what it covers, so faces mostly covered are dropped.
    """
    size = canvas.shape[0]
    canvas = canvas.copy()
    for _ in range(count):
        crop = crops[int(rng.integers(len(crops)))]
        side = int(math.exp(rng.uniform(math.log(side_range[0]), math.log(side_range[1]))))
        side = min(side, size)
        patch = cv2.resize(load_rgb_array(crop.path), (side, side), interpolation=cv2.INTER_AREA)
        face_x, face_y, face_w, face_h = crop.box
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
            face_x = 1 - face_x - face_w
        x = int(rng.integers(0, size - side + 1))
        y = int(rng.integers(0, size - side + 1))
        canvas[y : y + side, x : x + side] = patch
        boxes = _drop_covered(boxes, (x, y, side, side))
        face = [x + face_x * side, y + face_y * side, face_w * side, face_h * side]
        boxes = np.vstack([boxes, [face]]).astype(np.float32)
    return canvas, boxes


def close_up_view(
    crop: FaceCrop, rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A view of one identity crop, scaled from half the view to well beyond it: faces that
    fill the picture, as in the portraits users scrape, which frames rarely show."""
    rgb = load_rgb_array(crop.path)
    height, width = rgb.shape[:2]
    x, y, w, h = crop.box
    box = np.array([[x * width, y * height, w * width, h * height]], dtype=np.float32)
    return random_view(rgb, box, rng, size, (size * 0.5, size * 2.5))


def _drop_covered(boxes: np.ndarray, patch: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = patch
    inter_w = np.clip(
        np.minimum(boxes[:, 0] + boxes[:, 2], x + w) - np.maximum(boxes[:, 0], x), 0, None
    )
    inter_h = np.clip(
        np.minimum(boxes[:, 1] + boxes[:, 3], y + h) - np.maximum(boxes[:, 1], y), 0, None
    )
    covered = inter_w * inter_h / np.maximum(boxes[:, 2] * boxes[:, 3], 1e-6)
    return boxes[covered < 0.3]


def encode_targets(boxes: np.ndarray, size: int, stride: int = STRIDE) -> dict[str, np.ndarray]:
    """CenterNet targets on the ``stride`` grid of a ``size`` x ``size`` view.

    heatmap (1, S, S): per cell the highest Gaussian of any face; size (2, S, S) and offset
    (2, S, S) are set at each face's centre cell, where mask (S, S) is 1. The ``box_*``
    maps hold the same box seen from every cell of the face's central area (offset from
    that cell, so beyond 0..1), weighted by its Gaussian so that each face's weights sum
    to 1. Where faces overlap, the smaller face takes the shared cells (the larger then
    sums to less), except another face's centre cell, whose box targets stay its own.
    """
    cells = size // stride
    heatmap = np.zeros((1, cells, cells), dtype=np.float32)
    log_size = np.zeros((2, cells, cells), dtype=np.float32)
    offset = np.zeros((2, cells, cells), dtype=np.float32)
    mask = np.zeros((cells, cells), dtype=np.float32)
    box_log_size = np.zeros((2, cells, cells), dtype=np.float32)
    box_offset = np.zeros((2, cells, cells), dtype=np.float32)
    box_weight = np.zeros((cells, cells), dtype=np.float32)
    ys, xs = np.mgrid[0:cells, 0:cells].astype(np.float32)
    # Larger faces first, so a smaller face's cells keep its own box when two collide.
    for x, y, w, h in sorted(boxes.tolist(), key=lambda b: -b[2] * b[3]):
        cx, cy = (x + w / 2) / stride, (y + h / 2) / stride
        col, row = min(int(cx), cells - 1), min(int(cy), cells - 1)
        sigma_x = max(GAUSSIAN_ALPHA * w / stride / 6, 0.5)
        sigma_y = max(GAUSSIAN_ALPHA * h / stride / 6, 0.5)
        gaussian = np.exp(
            -((xs - col) ** 2) / (2 * sigma_x**2) - ((ys - row) ** 2) / (2 * sigma_y**2)
        )
        np.maximum(heatmap[0], gaussian, out=heatmap[0])
        face_log_size = (math.log(w / stride), math.log(h / stride))
        # Another face's centre cell keeps that face's box: its L1 and GIoU targets agree.
        area = (
            (np.abs(xs + 0.5 - cx) <= BOX_AREA_SHARE * w / stride / 2)
            & (np.abs(ys + 0.5 - cy) <= BOX_AREA_SHARE * h / stride / 2)
            & (mask == 0)
        )
        area[row, col] = True
        log_size[:, row, col] = face_log_size
        offset[:, row, col] = (cx - col, cy - row)
        mask[row, col] = 1.0
        box_weight[area] = gaussian[area] / gaussian[area].sum()
        box_log_size[:, area] = np.array(face_log_size, dtype=np.float32)[:, None]
        box_offset[0, area] = cx - xs[area]
        box_offset[1, area] = cy - ys[area]
    return {
        "heatmap": heatmap,
        "log_size": log_size,
        "offset": offset,
        "mask": mask,
        "box_log_size": box_log_size,
        "box_offset": box_offset,
        "box_weight": box_weight,
    }


@dataclass(frozen=True)
class ViewSettings:
    """How the training views are drawn (the same in the training process and in workers)."""

    size: int
    paste_probability: float
    close_up_probability: float
    stride: int = STRIDE
    # A frame's longest side, drawn log-uniformly from this range times ``size``.
    frame_scale: tuple[float, float] = FRAME_SCALE


def training_view(
    item: LabelledImage, crops: list[FaceCrop], rng: np.random.Generator, settings: ViewSettings
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One augmented view (uint8, size x size x 3) and its targets on the ``stride`` grid: a
    frame (with pasted faces now and then) or, with ``close_up_probability``, one identity
    crop. Worker processes send these, a quarter of the bytes of the normalised view."""
    size, stride = settings.size, settings.stride
    if crops and rng.random() < settings.close_up_probability:
        canvas, boxes = close_up_view(crops[int(rng.integers(len(crops)))], rng, size)
        canvas = random_colour(canvas, rng, COLOUR)
        return canvas, encode_targets(boxes, size, stride)
    low, high = settings.frame_scale
    canvas, boxes = random_view(
        load_rgb_array(item.path), item.boxes, rng, size, (size * low, size * high)
    )
    if crops and rng.random() < settings.paste_probability:
        count = int(rng.integers(1, 3))
        canvas, boxes = paste_faces(canvas, boxes, crops, rng, count, (40, size * 0.6))
    canvas = random_colour(canvas, rng, COLOUR)
    return canvas, encode_targets(boxes, size, stride)


def training_sample(
    item: LabelledImage, crops: list[FaceCrop], rng: np.random.Generator, settings: ViewSettings
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``training_view`` normalised (float32, 3 x size x size), as the network takes it."""
    canvas, targets = training_view(item, crops, rng, settings)
    return normalise(canvas).numpy(), targets
