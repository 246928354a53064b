"""Face detection and cropping: detectors behind one interface, and box geometry."""

from anime_face_id.faces.boxes import crop_square, iou, square_crop_box
from anime_face_id.faces.cascade import CascadeError, fetch_cascade, resolve_cascade
from anime_face_id.faces.detectors import (
    CenterNetDetector,
    Detection,
    Detector,
    DetectorWeightsError,
    LbpCascadeDetector,
    WholeImageDetector,
)

__all__ = [
    "CascadeError",
    "CenterNetDetector",
    "Detection",
    "Detector",
    "DetectorWeightsError",
    "LbpCascadeDetector",
    "WholeImageDetector",
    "crop_square",
    "fetch_cascade",
    "iou",
    "resolve_cascade",
    "square_crop_box",
]
