"""Embedding network: pretrained backbone, linear projection, L2 normalisation.

Unit-length outputs make euclidean and cosine distances rank neighbours identically and
bound every distance to [0, 2], which is what the triplet margin and the verification
threshold are expressed in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anime_face_id.config import TrainConfig
from anime_face_id.model.efficientnet_lite import (
    FEATURE_DIM,
    EfficientNetLite0,
    load_imagenet_weights,
)

BACKBONES = ("efficientnet_lite0",)


def build_backbone(name: str, pretrained: bool) -> tuple[nn.Module, int]:
    """The backbone (with a ``features(x) -> (B, dim)`` method) and its feature size."""
    if name != "efficientnet_lite0":
        raise ValueError(f"unknown backbone '{name}' (available: {', '.join(BACKBONES)})")
    backbone = EfficientNetLite0()
    if pretrained:
        load_imagenet_weights(backbone)
    # The ImageNet classifier is not part of the embedding; replacing it keeps it out of
    # the optimiser and the checkpoint.
    backbone._fc = nn.Identity()
    return backbone, FEATURE_DIM


class Embedder(nn.Module):
    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        embedding_dim: int = 128,
        pretrained: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.backbone_name = backbone
        self.embedding_dim = embedding_dim
        self.backbone, feature_dim = build_backbone(backbone, pretrained)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, embedding_dim) unit vectors."""
        features = self.backbone.features(x)
        return F.normalize(self.head(self.dropout(features)), p=2, dim=1)


def build_embedder(config: TrainConfig) -> Embedder:
    return Embedder(
        backbone=config.backbone,
        embedding_dim=config.embedding_dim,
        pretrained=config.pretrained,
        dropout=config.dropout,
    )
