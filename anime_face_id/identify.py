"""Naming the characters in a picture: every face is detected and cropped exactly as the
crop stage does it (same detector, margin and size from ``params.crop``), embedded through
``transforms.preprocess`` (via ``embed.embed_images``) and compared with the gallery.

The CLI, the identify app and the served MLflow model all go through ``Identifier`` and
all answer with ``PictureResult.to_json()`` per picture (``identify_results.PICTURE_JSON_SCHEMA``):

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

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from anime_face_id import layout
from anime_face_id.config import CropConfig, IdentifyConfig, Params
from anime_face_id.faces.boxes import crop_square, square_crop_box
from anime_face_id.faces.detectors import Detector
from anime_face_id.gallery import GALLERY, Gallery, load_gallery
from anime_face_id.identify_results import (
    SCHEMA,
    FaceResult,
    PictureResult,
    failed,
    rounded,
)
from anime_face_id.imaging import ImageRejected, read_picture
from anime_face_id.naming import name_embeddings
from anime_face_id.picture_input import base64_bytes, decode_picture

# --------------------------------------------------------------------- the identifier

PICTURES_PER_PASS = 16  # pictures whose faces share forward passes, and are held at once


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
            "threshold": rounded(self.gallery.threshold),
            "calibration": self.gallery.calibration.method,
            "detector": self.detector.name,
            "index": self.gallery.index.kind,
            "image_size": self.image_size,
        }

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
            name_embeddings(
                self.gallery,
                embeddings,
                self.config.top if top is None else top,
                self.config.neighbours if neighbours is None else neighbours,
                self.config.search_depth,
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
        """(base64 text, picture name) rows, as the served model receives them. A request
        of more than ``identify.max_pictures`` rows gets an error row for each: its run
        time would have no bound."""
        limit = self.config.max_pictures
        if len(rows) > limit:
            reason = (
                f"the request holds {len(rows)} pictures, more than identify.max_pictures "
                f"({limit}): send them in smaller requests"
            )
            return [failed(name, reason) for _text, name in rows]
        return self.identify_many(
            [(name, functools.partial(self._from_base64, text)) for text, name in rows], **options
        )

    def identify_many(
        self, sources: Sequence[tuple[str, Callable[[], Image.Image]]], **options
    ) -> list[PictureResult]:
        """Several pictures, each given as (name, a function that loads it), a few at a
        time: the crops of at most PICTURES_PER_PASS pictures are held at once."""
        results = []
        for start in range(0, len(sources), PICTURES_PER_PASS):
            results += self._identify_together(
                sources[start : start + PICTURES_PER_PASS], **options
            )
        return results

    def _identify_together(
        self, sources: Sequence[tuple[str, Callable[[], Image.Image]]], **options
    ) -> list[PictureResult]:
        """Each picture is loaded and its faces detected and cut out in turn (only the
        crops are kept, so memory does not grow with the pictures' sizes), then every face
        is embedded in shared batches (fewer, fuller forward passes) and named. A picture
        that cannot be read or fails is an error result, never an exception: one bad
        picture must never stop a batch or a server."""
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
                    else self._identify_together([sources[number]], **options)[0]
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
    from anime_face_id.device import resolve_device
    from anime_face_id.faces.detectors import load_detector

    torch_device = resolve_device(device or config.device)
    loaded = load_checkpoint(checkpoint, torch_device)
    gallery = load_gallery(gallery_path)
    gallery.check_embedder(loaded.sha256, where=str(gallery_path))
    gallery.check_crop(crop.margin, crop.size, where=str(gallery_path))
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
