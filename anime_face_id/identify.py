"""Naming the characters in a picture: every face is detected and cropped exactly as the
crop stage does it (same detector, margin and size from ``params.crop``), embedded through
``transforms.preprocess`` (via ``embed.embed_images``) and compared with the gallery.

The CLI, the identify app and the served MLflow model all go through ``Identifier`` and
all answer with ``PictureResult.to_json()`` per picture (``PICTURE_JSON_SCHEMA``):

    {"picture": "a.jpg", "status": "ok" | "no_face" | "error", "error": null | "reason",
     "width": 640, "height": 480,
     "faces": [{"box": {"x", "y", "w", "h"},          detected face, picture pixels
                "crop": {"x", "y", "side"},           the square that was embedded
                "detector_score": 1.0,
                "character": "Name" | null,           null: unknown (score < threshold)
                "known": true, "score": 0.91,         best character's similarity
                "candidates": [{"character", "score"}, ...],   best first, top N
                "neighbours": [{"character", "similarity", "path"}, ...]}]}

Bad input (unreadable, not an image, truncated, too many pixels or bytes) never raises:
it becomes ``status: error`` with a specific reason.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from anime_face_id import layout
from anime_face_id.config import CropConfig, IdentifyConfig, Params
from anime_face_id.faces.boxes import crop_square, square_crop_box
from anime_face_id.faces.detectors import Detector
from anime_face_id.fileio import UnreadableFile, read_regular_file
from anime_face_id.gallery import GALLERY, Gallery, embedder_fingerprint, load_gallery
from anime_face_id.imaging import DEFAULT_MAX_DECODE_BYTES, ImageRejected, decode

SCHEMA = "anime-face-id/identify/v1"
UNKNOWN = "unknown"
KNOWN_COLOUR = (40, 200, 90)
UNKNOWN_COLOUR = (255, 150, 30)


# --------------------------------------------------------------------- results


@dataclass(frozen=True)
class Candidate:
    character: str
    score: float


@dataclass(frozen=True)
class Neighbour:
    character: str
    similarity: float
    path: str


class Naming(NamedTuple):
    """What the gallery says about one face embedding."""

    character: str | None  # None: unknown (best score below the threshold)
    score: float  # the best character's score
    candidates: list[Candidate]
    neighbours: list[Neighbour]


@dataclass(frozen=True)
class FaceResult:
    box: tuple[int, int, int, int]  # x, y, w, h of the detection
    crop: tuple[int, int, int]  # x, y, side of the embedded square
    detector_score: float
    character: str | None  # None: unknown
    score: float
    candidates: list[Candidate]
    neighbours: list[Neighbour]

    @property
    def known(self) -> bool:
        return self.character is not None

    @property
    def label(self) -> str:
        return self.character if self.character is not None else UNKNOWN

    def to_json(self) -> dict:
        x, y, w, h = self.box
        cx, cy, side = self.crop
        return {
            "box": {"x": x, "y": y, "w": w, "h": h},
            "crop": {"x": cx, "y": cy, "side": side},
            "detector_score": _round(self.detector_score),
            "character": self.character,
            "known": self.known,
            "score": _round(self.score),
            "candidates": [
                {"character": c.character, "score": _round(c.score)} for c in self.candidates
            ],
            "neighbours": [
                {"character": n.character, "similarity": _round(n.similarity), "path": n.path}
                for n in self.neighbours
            ],
        }


@dataclass(frozen=True)
class PictureResult:
    picture: str
    status: str  # ok | no_face | error
    error: str | None = None
    width: int | None = None
    height: int | None = None
    faces: tuple[FaceResult, ...] = ()

    def to_json(self) -> dict:
        return {
            "picture": self.picture,
            "status": self.status,
            "error": self.error,
            "width": self.width,
            "height": self.height,
            "faces": [face.to_json() for face in self.faces],
        }


def _round(value: float) -> float | None:
    return round(float(value), 4) if math.isfinite(value) else None


def failed(picture: str, reason: str) -> PictureResult:
    return PictureResult(picture, "error", reason)


_NAMED_SCORE = {"type": ["number", "null"]}
_FACE_SCHEMA = {
    "type": "object",
    "required": [
        "box",
        "crop",
        "detector_score",
        "character",
        "known",
        "score",
        "candidates",
        "neighbours",
    ],
    "additionalProperties": False,
    "properties": {
        "box": {
            "type": "object",
            "required": ["x", "y", "w", "h"],
            "additionalProperties": False,
            "properties": {k: {"type": "integer"} for k in "xywh"},
        },
        "crop": {
            "type": "object",
            "required": ["x", "y", "side"],
            "additionalProperties": False,
            "properties": {k: {"type": "integer"} for k in ("x", "y", "side")},
        },
        "detector_score": _NAMED_SCORE,
        "character": {"type": ["string", "null"]},
        "known": {"type": "boolean"},
        "score": _NAMED_SCORE,
        "candidates": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["character", "score"],
                "additionalProperties": False,
                "properties": {"character": {"type": "string"}, "score": _NAMED_SCORE},
            },
        },
        "neighbours": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["character", "similarity", "path"],
                "additionalProperties": False,
                "properties": {
                    "character": {"type": "string"},
                    "similarity": _NAMED_SCORE,
                    "path": {"type": "string"},
                },
            },
        },
    },
}
# The output for one picture, as JSON Schema (the stable contract; README documents it).
PICTURE_JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["picture", "status", "error", "width", "height", "faces"],
    "additionalProperties": False,
    "properties": {
        "picture": {"type": "string"},
        "status": {"enum": ["ok", "no_face", "error"]},
        "error": {"type": ["string", "null"]},
        "width": {"type": ["integer", "null"]},
        "height": {"type": ["integer", "null"]},
        "faces": {"type": "array", "items": _FACE_SCHEMA},
    },
}


# --------------------------------------------------------------------- reading input


def decode_picture(
    data: bytes, max_bytes: int, max_pixels: int, max_memory: int = DEFAULT_MAX_DECODE_BYTES
) -> Image.Image:
    """Upright RGB, or ImageRejected with the reason (size limits checked before decoding)."""
    if len(data) > max_bytes:
        raise ImageRejected(f"too large: {len(data)} bytes (the limit is {max_bytes})")
    return decode(data, max_pixels, max_memory)[0]


def read_picture(path: Path, max_bytes: int) -> bytes:
    """The file's bytes; a file over ``max_bytes``, a pipe or a device is refused unread
    (ImageRejected)."""
    try:
        return read_regular_file(path, max_bytes)
    except UnreadableFile as error:
        prefix = "" if error.reason.startswith("too large") else "cannot read: "
        raise ImageRejected(prefix + error.reason) from None


def base64_bytes(text: object, max_bytes: int) -> bytes:
    """Bytes of a base64 string (a ``data:image/...;base64,`` prefix is allowed)."""
    if not isinstance(text, str) or not text.strip():
        raise ImageRejected("no image given: expected a base64-encoded picture")
    text = text.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    if len(text) * 3 // 4 > max_bytes + 2:
        raise ImageRejected(
            f"too large: about {len(text) * 3 // 4} bytes (the limit is {max_bytes})"
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageRejected(f"not base64: {error}") from None


# --------------------------------------------------------------------- the identifier


@dataclass(frozen=True)
class _Found:
    """One picture's detections and the squares cut around them, before naming."""

    width: int
    height: int
    detections: list
    squares: list[tuple[int, int, int]]
    crops: list[np.ndarray]


class Identifier:
    """Detector + embedder + gallery, ready to name faces."""

    def __init__(
        self,
        model,
        image_size: int,
        gallery: Gallery,
        detector: Detector,
        crop: CropConfig,
        config: IdentifyConfig,
        device="cpu",
    ):
        self.model = model
        self.image_size = image_size
        self.gallery = gallery
        self.detector = detector
        self.crop = crop
        self.config = config
        self.device = device

    def describe(self) -> dict:
        return {
            "embedder_sha256": self.gallery.embedder,
            "characters": len(self.gallery.class_names),
            "gallery_items": len(self.gallery),
            "threshold": _round(self.gallery.threshold),
            "calibration": self.gallery.calibration.method,
            "detector": self.detector.name,
            "index": self.gallery.index.kind,
            "image_size": self.image_size,
        }

    # ---- naming embeddings

    def name(self, embeddings: np.ndarray, top: int, neighbours: int) -> list[Naming]:
        """What the gallery says about each embedding."""
        if self.gallery.index.kind == "exact":
            return self._name_exactly(embeddings, top, neighbours)
        return self._name_from_neighbours(embeddings, top, neighbours)

    def _name_exactly(self, embeddings: np.ndarray, top: int, neighbours: int) -> list[Naming]:
        """Every gallery item compared: each character's score is its best item's
        similarity (vectorised per character), the neighbours a partial sort."""
        from anime_face_id.search_index import top_k, unit_rows

        gallery = self.gallery
        groups, grouped_vectors = gallery.grouped
        similarity = unit_rows(np.atleast_2d(embeddings)) @ grouped_vectors.T
        scores = groups.maxima(similarity, len(gallery.class_names))
        best_classes, best_scores = top_k(scores, top)
        near_columns, near_similarities = top_k(similarity, neighbours)
        near_items = groups.order[near_columns]
        named = []
        for classes, class_scores, items, item_similarities in zip(
            best_classes, best_scores, near_items, near_similarities, strict=True
        ):
            candidates = [
                Candidate(gallery.class_names[int(c)], float(s))
                for c, s in zip(classes, class_scores, strict=True)
                if math.isfinite(s)
            ]
            nearest = [
                Neighbour(gallery.character_of(i), float(s), gallery.paths[int(i)])
                for i, s in zip(items, item_similarities, strict=True)
            ]
            named.append(self._verdict(candidates, nearest))
        return named

    def _verdict(self, candidates: list[Candidate], nearest: list[Neighbour]) -> Naming:
        best = candidates[0] if candidates else Candidate(UNKNOWN, -math.inf)
        known = bool(candidates) and best.score >= self.gallery.threshold
        return Naming(best.character if known else None, best.score, candidates, nearest)

    def _name_from_neighbours(
        self, embeddings: np.ndarray, top: int, neighbours: int
    ) -> list[Naming]:
        """An approximate index: characters scored from the ``search_depth`` nearest
        items."""
        depth = max(self.config.search_depth, self.config.neighbours, self.config.top)
        indices, similarities = self.gallery.search(embeddings, depth)
        named = []
        for row, sims in zip(indices, similarities, strict=True):
            ranked = [(int(i), float(s)) for i, s in zip(row, sims, strict=True) if i >= 0]
            candidates: list[Candidate] = []
            seen: set[str] = set()
            # A character's score is its best item's similarity: its first appearance.
            for index, similarity in ranked:
                character = self.gallery.character_of(index)
                if character not in seen:
                    seen.add(character)
                    candidates.append(Candidate(character, similarity))
                    if len(candidates) == top:
                        break
            nearest = [
                Neighbour(self.gallery.character_of(i), s, self.gallery.paths[i])
                for i, s in ranked[:neighbours]
            ]
            named.append(self._verdict(candidates, nearest))
        return named

    # ---- pictures

    def _detect(self, rgb: np.ndarray) -> _Found:
        """The faces of an upright H x W x 3 uint8 RGB picture and their crops."""
        height, width = rgb.shape[:2]
        detections = self.detector.detect(rgb)
        squares = [square_crop_box(d.box, width, height, self.crop.margin) for d in detections]
        crops = [crop_square(rgb, x, y, side, self.crop.size) for x, y, side in squares]
        return _Found(width, height, detections, squares, crops)

    def _named(
        self, found: Sequence[_Found], top: int | None = None, neighbours: int | None = None
    ) -> list[list[FaceResult]]:
        """Every face of several pictures embedded in shared batches, then named."""
        from anime_face_id.embed import embed_images

        crops = [crop for picture in found for crop in picture.crops]
        if not crops:
            return [[] for _ in found]
        embeddings = embed_images(
            self.model, crops, self.image_size, self.device, self.config.batch_size
        ).numpy()
        named = iter(
            self.name(
                embeddings,
                self.config.top if top is None else top,
                self.config.neighbours if neighbours is None else neighbours,
            )
        )
        return [
            [
                FaceResult(d.box, square, d.score, *next(named))
                for d, square in zip(picture.detections, picture.squares, strict=True)
            ]
            for picture in found
        ]

    def identify_rgb(
        self, rgb: np.ndarray, top: int | None = None, neighbours: int | None = None
    ) -> list[FaceResult]:
        """Every face of an upright H x W x 3 uint8 RGB picture, named."""
        return self._named([self._detect(rgb)], top, neighbours)[0]

    def identify_image(self, picture: str, image: Image.Image, **options) -> PictureResult:
        return self.identify_many([(picture, lambda: image)], **options)[0]

    def identify_bytes(self, data: bytes, picture: str, **options) -> PictureResult:
        return self.identify_many([(picture, lambda: self._decode(data))], **options)[0]

    def identify_file(self, path: Path, picture: str | None = None, **options) -> PictureResult:
        return self.identify_files([path], [picture], **options)[0]

    def identify_files(
        self, paths: Sequence[Path], pictures: Sequence[str | None] | None = None, **options
    ) -> list[PictureResult]:
        """Several files at once (see ``identify_many``); ``pictures``: their names."""
        names = pictures or [None] * len(paths)
        return self.identify_many(
            [
                (str(path) if name is None else name, functools.partial(self._read, Path(path)))
                for path, name in zip(paths, names, strict=True)
            ],
            **options,
        )

    def identify_base64(self, text: object, picture: str, **options) -> PictureResult:
        return self.identify_many([(picture, lambda: self._from_base64(text))], **options)[0]

    def identify_base64_rows(
        self, rows: Sequence[tuple[object, str]], **options
    ) -> list[PictureResult]:
        """(base64 text, picture name) rows, as the served model receives them."""
        return self.identify_many(
            [(name, functools.partial(self._from_base64, text)) for text, name in rows], **options
        )

    def identify_many(
        self, sources: Sequence[tuple[str, Callable[[], Image.Image]]], **options
    ) -> list[PictureResult]:
        """Several pictures at once, each given as (name, a function that loads it): each
        is loaded and its faces detected and cut out in turn (only the crops are kept,
        so memory does not grow with the pictures' sizes), then every face is embedded in
        shared batches (fewer, fuller forward passes) and named. A picture that cannot be
        read or fails is an error result, never an exception: one bad picture must never
        stop a batch or a server."""
        found: dict[int, _Found] = {}
        results: dict[int, PictureResult] = {}
        for number, (picture, load) in enumerate(sources):
            try:
                image = load()
            except ImageRejected as error:
                results[number] = failed(picture, error.reason)
                continue
            try:
                found[number] = self._detect(np.asarray(image.convert("RGB")))
            except Exception as error:
                results[number] = failed(picture, f"identification failed: {error}")
        try:
            faces = dict(zip(found, self._named(list(found.values()), **options), strict=True))
        except Exception as error:
            faces = {}
            for number in found:
                results[number] = (
                    failed(sources[number][0], f"identification failed: {error}")
                    if len(found) == 1
                    # find the culprit: each picture on its own
                    else self.identify_many([sources[number]], **options)[0]
                )
        for number, picture_faces in faces.items():
            where = found[number]
            results[number] = PictureResult(
                sources[number][0],
                "ok" if picture_faces else "no_face",
                None,
                where.width,
                where.height,
                tuple(picture_faces),
            )
        return [results[number] for number in range(len(sources))]

    # ---- reading

    def _decode(self, data: bytes) -> Image.Image:
        max_memory = self.crop.max_decode_mb * 2**20
        return decode_picture(data, self.config.max_bytes, self.crop.max_pixels, max_memory)

    def _read(self, path: Path) -> Image.Image:
        return self._decode(read_picture(path, self.config.max_bytes))

    def _from_base64(self, text: object) -> Image.Image:
        return self._decode(base64_bytes(text, self.config.max_bytes))


def report(identifier: Identifier, results: Sequence[PictureResult]) -> dict:
    """The CLI's ``--json`` document."""
    return {
        "schema": SCHEMA,
        "model": identifier.describe(),
        "pictures": [result.to_json() for result in results],
    }


# --------------------------------------------------------------------- loading


def _resolve(root: Path, path: Path | str) -> Path:
    path = Path(path)
    return path if path.is_absolute() else Path(root) / path


def build_identifier(
    checkpoint: Path,
    gallery_path: Path,
    crop: CropConfig,
    config: IdentifyConfig,
    root: Path = Path("."),
    device: str | None = None,
) -> Identifier:
    """Load everything; a missing model, a stale gallery or a missing cascade raise with
    a message saying what to run (StageError / CascadeError)."""
    from anime_face_id.checkpoint import load_checkpoint
    from anime_face_id.crop import load_detector
    from anime_face_id.device import resolve_device

    torch_device = resolve_device(device or config.device)
    loaded = load_checkpoint(checkpoint, torch_device)
    gallery = load_gallery(gallery_path)
    gallery.check_embedder(embedder_fingerprint(checkpoint), where=str(gallery_path))
    gallery.use_index(config)
    detector = load_detector(Path(root), crop)
    return Identifier(
        loaded.model, loaded.image_size, gallery, detector, crop, config, torch_device
    )


def load_identifier(
    root: Path,
    params: Params,
    checkpoint: Path | str = layout.EMBEDDER,
    gallery: Path | str = GALLERY,
    device: str | None = None,
) -> Identifier:
    """The project's identifier: its checkpoint, gallery and ``params.crop`` detector."""
    root = Path(root)
    return build_identifier(
        _resolve(root, checkpoint),
        _resolve(root, gallery),
        params.crop,
        params.identify,
        root,
        device,
    )


# --------------------------------------------------------------------- drawing


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def annotate(image: Image.Image, faces: Sequence[FaceResult]) -> Image.Image:
    """A copy of ``image`` with each face boxed and labelled "name score" (unknown faces
    in another colour)."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    size = max(12, min(canvas.size) // 28)
    font = _font(size)
    line = max(2, size // 6)
    for number, face in enumerate(faces, start=1):
        x, y, w, h = face.box
        colour = KNOWN_COLOUR if face.known else UNKNOWN_COLOUR
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=colour, width=line)
        text = f"{number}. {face.label} {face.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top
        label_y = y - text_h - 2 * line if y - text_h - 2 * line >= 0 else y + h
        label_x = min(max(0, x), max(0, canvas.width - text_w - 2 * line))
        draw.rectangle(
            [label_x, label_y, label_x + text_w + 2 * line, label_y + text_h + 2 * line],
            fill=colour,
        )
        draw.text((label_x + line - left, label_y + line - top), text, fill=(0, 0, 0), font=font)
    return canvas
