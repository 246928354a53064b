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
from anime_face_id.crop_index import CROP_FILE, new_entry, rejected_entry, write_if_changed
from anime_face_id.faces.boxes import crop_square, square_crop_box
from anime_face_id.faces.detectors import Detector
from anime_face_id.imaging import ImageRejected, decode, phash, read_picture


def _png(crop: np.ndarray) -> tuple[bytes, str]:
    image = Image.fromarray(crop, "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), phash(image)


def crop_file_name(sha256: str, box: tuple[int, int, int, int]) -> str:
    """A crop's file name: its picture and the detected box. The review decisions are
    recorded by this name, so it must name one face: after a detector change a different
    face gets a different name (pending review), never the decision about another."""
    x, y, w, h = box
    return f"{sha256[:16]}_{x}_{y}_{w}_{h}.png"


def previous_names(entry: object, sha256: str) -> dict[tuple[int, int, int, int], str]:
    """The crop names of a picture's previous index entry by box: a face detected in the
    same place again keeps its name, so margin or size changes, and crops named by an
    older version (by their order), keep their review decisions. The index is a file a
    person may have edited: only crop names of this picture count."""
    faces = (entry.get("faces") or entry.get("earlier_faces")) if isinstance(entry, dict) else None
    names = {}
    for face in faces if isinstance(faces, list) else []:
        try:
            box = (int(face["x"]), int(face["y"]), int(face["w"]), int(face["h"]))
            name = face["file"]
        except (KeyError, TypeError, ValueError):
            continue
        if isinstance(name, str) and CROP_FILE.fullmatch(name) and name.startswith(sha256[:16]):
            names[box] = name
    return names


def _cut_faces(
    rgb: np.ndarray,
    detections: list,
    sha256: str,
    directory: Path,
    config: CropConfig,
    previous: dict[tuple[int, int, int, int], str],
) -> list[dict]:
    height, width = rgb.shape[:2]
    faces = []
    named: set[str] = set()
    for detection in detections:
        name = previous.get(detection.box) or crop_file_name(sha256, detection.box)
        if name in named:
            continue  # the same box twice is one face
        named.add(name)
        x, y, side = square_crop_box(detection.box, width, height, config.margin)
        data, crop_phash = _png(crop_square(rgb, x, y, side, config.size))
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
    previous: dict | None = None,
) -> dict:
    """Detect and crop one raw image; every failure becomes the entry's ``reason``.
    ``previous``: the image's last index entry, whose crop names a face found in the same
    place keeps."""
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
        faces = _cut_faces(
            rgb, detections, sha256, directory, config, previous_names(previous, sha256)
        )
    except ValueError as error:  # a detector returned a box outside the image
        return rejected_entry(entry, f"invalid face box: {error}", cacheable=False)
    return {**entry, "faces": faces}
