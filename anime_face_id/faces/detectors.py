"""Face detectors behind one interface.

A detector takes an upright H x W x 3 uint8 RGB array and returns face boxes in its pixels.
``settings`` names everything that changes a detector's output, so the crop stage can tell
whether a cached result is still valid.
"""

from __future__ import annotations

import functools
import pickle
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from anime_face_id.config import CropConfig
from anime_face_id.faces.cascade import CascadeError, resolve_cascade
from anime_face_id.fileio import file_sha256

# The trained detector's weights ship inside the package (see weights/MODEL_CARD.md).
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "centernet_lite0.pt"


@dataclass(frozen=True)
class Detection:
    x: int
    y: int
    w: int
    h: int
    score: float

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)


@runtime_checkable
class Detector(Protocol):
    name: str

    @property
    def settings(self) -> Mapping[str, object]:
        """JSON-serialisable; equal settings must mean equal detections."""
        ...

    def detect(self, rgb: np.ndarray) -> list[Detection]: ...


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")


class WholeImageDetector:
    """The whole picture is the face: for folders of ready-made face crops."""

    name = "none"

    @property
    def settings(self) -> Mapping[str, object]:
        return {"name": self.name}

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        _check_rgb(rgb)
        height, width = rgb.shape[:2]
        return [Detection(0, 0, width, height, 1.0)]


def load_cascade(path: Path) -> cv2.CascadeClassifier:
    """Load a cascade file, with a clear error when it is missing or not a cascade."""
    if not path.is_file():
        raise CascadeError(f"cascade file not found: {path}")
    try:
        path.open("rb").close()
    except OSError as error:
        raise CascadeError(f"cannot read cascade file {path}: {error.strerror or error}") from None
    try:
        classifier = cv2.CascadeClassifier(str(path))
    except (cv2.error, SystemError):  # some malformed files make the constructor raise
        classifier = None
    if classifier is None or classifier.empty():
        raise CascadeError(f"{path} is not an OpenCV cascade file (it failed to load)")
    return classifier


class LbpCascadeDetector:
    """nagadomi's lbpcascade_animeface, run the way its author does: equalised grey image,
    scaleFactor 1.1, minNeighbors 5, minSize 24 by default.

    OpenCV's CascadeClassifier keeps per-image state inside the object, so concurrent
    ``detect`` calls on one classifier are unsafe; each thread gets its own copy (loading
    one takes milliseconds). detectMultiScale3 with outputRejectLevels returns the same
    boxes as detectMultiScale plus the final stage's weight, which serves as the score.
    """

    name = "lbp"

    def __init__(
        self, cascade: Path, scale_factor: float = 1.1, min_neighbors: int = 5, min_size: int = 24
    ):
        self.cascade = Path(cascade)
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        load_cascade(self.cascade)  # fail now, in the caller's thread, not inside a pool
        self._cascade_sha256 = file_sha256(self.cascade)
        self._local = threading.local()

    @property
    def settings(self) -> Mapping[str, object]:
        return {
            "name": self.name,
            "cascade_sha256": self._cascade_sha256,
            "scale_factor": self.scale_factor,
            "min_neighbors": self.min_neighbors,
            "min_size": self.min_size,
        }

    # Orchestrators pickle task inputs (cache keys, process or cluster workers); the
    # per-thread classifiers cannot be pickled, and are rebuilt on demand anyway.
    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _classifier(self) -> cv2.CascadeClassifier:
        classifier = getattr(self._local, "classifier", None)
        if classifier is None:
            classifier = self._local.classifier = load_cascade(self.cascade)
        return classifier

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        _check_rgb(rgb)
        grey = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        boxes, _levels, weights = self._classifier().detectMultiScale3(
            grey,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
            outputRejectLevels=True,
        )
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        scores = np.asarray(weights, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):  # older builds may not report weights
            scores = np.ones(len(boxes))
        found = [
            Detection(int(x), int(y), int(w), int(h), round(float(s), 6))
            for (x, y, w, h), s in zip(boxes, scores, strict=True)
        ]
        # OpenCV gathers candidates from worker threads, so its output order can vary
        # between runs; a fixed order keeps crop file names stable.
        return sorted(found, key=lambda d: (-d.score, d.y, d.x, d.w, d.h))


class DetectorWeightsError(CascadeError):
    """The detector's weights file is missing or is not one."""


def load_detector_weights(path: Path):
    """``centernet.load_weights(path)``: the model and its metadata, any failure a
    DetectorWeightsError saying what the file is not (missing, empty, unreadable, another
    format, keys that do not match)."""
    from anime_face_id.faces.centernet import load_weights

    if not path.is_file():
        raise DetectorWeightsError(f"detector weights not found: {path}")
    try:
        empty = path.stat().st_size == 0
    except OSError as error:  # e.g. a Dask worker without the file
        raise DetectorWeightsError(
            f"cannot read detector weights {path}: {error.strerror or error}"
        ) from None
    if empty:
        raise DetectorWeightsError(f"cannot load detector weights {path}: it is empty")
    try:
        return load_weights(path)
    except ValueError as error:  # ours: says what the file is not
        raise DetectorWeightsError(f"cannot load detector weights: {error}") from None
    except RuntimeError as error:  # torch's: a damaged archive or keys that do not match
        raise DetectorWeightsError(f"cannot load detector weights {path}: {error}") from None
    except (OSError, EOFError, KeyError, pickle.PickleError) as error:
        # torch's own messages can be a bare number or nothing at all
        raise DetectorWeightsError(
            f"cannot load detector weights {path}: not a PyTorch weights file "
            f"that this version can read ({type(error).__name__}: {error})"
        ) from None


class CenterNetDetector:
    """The project's own detector: a CenterNet head on EfficientNet-Lite0, trained on
    cartoon frames and pasted illustration faces (``anime_face_id/faces/weights``).

    The picture is scaled so its longest side is ``input_size``; faces scoring at least
    ``min_score`` are kept, and of two boxes overlapping by more than ``nms_iou`` the
    weaker goes. torch modules are safe to call from several threads in inference mode.
    """

    name = "centernet"

    def __init__(
        self,
        weights: Path | None = None,
        input_size: int = 512,
        min_score: float = 0.3,
        nms_iou: float = 0.5,
    ):
        self.weights = Path(weights) if weights is not None else PACKAGED_WEIGHTS
        self.input_size = input_size
        self.min_score = min_score
        self.nms_iou = nms_iou
        if not self.weights.is_file():
            raise DetectorWeightsError(f"detector weights not found: {self.weights}")
        self._weights_sha256 = file_sha256(self.weights)
        self._model = self._load()

    def _load(self):
        from anime_face_id.device import place

        model, _metadata = load_detector_weights(self.weights)
        return place(model, "cpu")

    @property
    def settings(self) -> Mapping[str, object]:
        return {
            "name": self.name,
            "weights_sha256": self._weights_sha256,
            "input_size": self.input_size,
            "min_score": self.min_score,
            "nms_iou": self.nms_iou,
        }

    # Workers receive a pickled copy; the model is reloaded there from the weights file.
    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "_model"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._model = self._load()

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        from anime_face_id.faces.centernet import detect_boxes

        _check_rgb(rgb)
        found = detect_boxes(
            self._model,
            rgb,
            input_size=self.input_size,
            min_score=self.min_score,
            nms_iou=self.nms_iou,
        )
        detections = []
        for x, y, w, h, score in found:
            left, top = round(x), round(y)
            right = min(rgb.shape[1], round(x + w))
            bottom = min(rgb.shape[0], round(y + h))
            if right > left and bottom > top:
                detections.append(
                    Detection(left, top, right - left, bottom - top, round(float(score), 6))
                )
        return sorted(detections, key=lambda d: (-d.score, d.y, d.x, d.w, d.h))


# ---------------------------------------------------------------- the configured detector


def load_detector(root: Path, config: CropConfig) -> Detector:
    """The configured detector; for ``lbp`` this may download and verify the cascade."""
    if config.detector == "none":
        return WholeImageDetector()
    if config.detector == "centernet":
        weights = detector_weights_path(root, config)
        return CenterNetDetector(weights, config.input_size, config.min_score, config.nms_iou)
    cascade = resolve_cascade(Path(root), config.cascade)
    return LbpCascadeDetector(cascade, config.scale_factor, config.min_neighbors, config.min_size)


@functools.lru_cache(maxsize=4)
def process_detector(root: Path, config: CropConfig) -> Detector:
    """``load_detector`` once per process and settings: the crop flow's process, or each
    Dask worker's (a detector is loaded where it runs, never sent over the network; the
    cascade's OpenCV object could not be)."""
    return load_detector(Path(root), config)


def detector_weights_path(root: Path, config: CropConfig) -> Path:
    """The CenterNet weights: ``crop.detector_weights`` (relative to the project root), or
    the file shipped in the package."""
    if config.detector_weights:
        return Path(root) / config.detector_weights
    return PACKAGED_WEIGHTS
