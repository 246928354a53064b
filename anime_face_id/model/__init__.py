"""Backbones and the embedding network."""

from anime_face_id.model.efficientnet_lite import (
    EfficientNetLite,
    EfficientNetLite0,
    PretrainedWeightsMissing,
    load_imagenet_weights,
)
from anime_face_id.model.embedder import Embedder, build_embedder

__all__ = [
    "EfficientNetLite",
    "EfficientNetLite0",
    "Embedder",
    "PretrainedWeightsMissing",
    "build_embedder",
    "load_imagenet_weights",
]
