"""One raw picture of the crop stage: read, decode, detect, and cut each face as a square
widened by the margin, resized to ``size`` and saved as PNG. Every failure becomes the
index entry's ``reason``; nothing here stops the stage."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from anime_face_id import layout
from anime_face_id.config import CropConfig
from anime_face_id.crop_index import new_entry, rejected_entry, write_if_changed
from anime_face_id.faces.boxes import crop_square, square_crop_box
from anime_face_id.faces.detectors import Detector
from anime_face_id.imaging import ImageRejected, decode, phash, read_picture


def _png(crop: np.ndarray) -> tuple[bytes, str]:
    image = Image.fromarray(crop, "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), phash(image)


def _cut_faces(
    rgb: np.ndarray, detections: list, sha256: str, directory: Path, config: CropConfig
) -> list[dict]:
    height, width = rgb.shape[:2]
    faces = []
    for number, detection in enumerate(detections):
        x, y, side = square_crop_box(detection.box, width, height, config.margin)
        data, crop_phash = _png(crop_square(rgb, x, y, side, config.size))
        name = f"{sha256[:16]}_{number}.png"
        write_if_changed(directory / name, data)
        faces.append(
            {
                "file": name,
                "x": detection.x,
                "y": detection.y,
                "w": detection.w,
                "h": detection.h,
                "crop_x": x,
                "crop_y": y,
                "crop_side": side,
                "score": detection.score,
                "phash": crop_phash,
            }
        )
    return faces


def crop_image(
    root: Path,
    directory: Path,
    sha256: str,
    row: dict,
    config: CropConfig,
    detector: Detector,
    fingerprint: str,
) -> dict:
    """Detect and crop one raw image; every failure becomes the entry's ``reason``."""
    entry = new_entry(row, fingerprint)
    try:
        path = layout.project_path(root, row["path"], layout.RAW_DIR)
    except layout.UnsafeValue as error:
        return rejected_entry(entry, f"source {error}")
    budget = config.max_decode_mb * 2**20  # no picture file is larger than its pixels
    try:
        # bounded, and refusing pipes and devices: a hand-edited manifest can name anything
        data = read_picture(path, budget)
    except ImageRejected as error:
        return rejected_entry(entry, error.reason, cacheable=False)
    try:
        image, _format = decode(data, config.max_pixels, budget)
    except ImageRejected as error:
        return rejected_entry(entry, error.reason)
    rgb = np.asarray(image)
    try:
        detections = detector.detect(rgb)
    except Exception as error:  # one image must never stop the stage
        return rejected_entry(entry, f"detector failed: {error}", cacheable=False)
    if not detections:
        return rejected_entry(entry, layout.NO_FACE)
    try:
        faces = _cut_faces(rgb, detections, sha256, directory, config)
    except ValueError as error:  # a detector returned a box outside the image
        return rejected_entry(entry, f"invalid face box: {error}", cacheable=False)
    return {**entry, "faces": faces}
