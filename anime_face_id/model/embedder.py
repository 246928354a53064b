"""Embedding network: pretrained backbone, linear projection, L2 normalisation.

Unit-length outputs make euclidean and cosine distances rank neighbours identically and
bound every distance to [0, 2], which is what the triplet margin and the verification
threshold are expressed in.

Options from the re-identification and retrieval literature, all off by default:

* ``neck="batchnorm"``: the BNNeck of Luo et al. 2019 ("Bag of Tricks and a Strong
  Baseline for Deep Person Re-identification"). A BatchNorm layer (no learned shift)
  follows the projection; the triplet loss sees the projection, the identity loss and
  the embedding see its normalised version, so the two losses stop pulling one feature
  space two ways.
* ``pooling="gem"``: generalised-mean pooling of the backbone's last map instead of its
  average (``anime_face_id.model.pooling``).
* ``flip_test``: in eval mode the embedding is that of the image and its mirror image,
  averaged; every user of the model (evaluate, gallery, identify, the served model) gets
  it, because it lives in the network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anime_face_id.config import TrainConfig
from anime_face_id.model.efficientnet_lite import (
    FEATURE_DIM,
    VARIANTS,
    EfficientNetLite,
    load_imagenet_weights,
)
from anime_face_id.model.pooling import build_pooling

BACKBONES = tuple(VARIANTS)
NECKS = ("none", "batchnorm")


def build_backbone(name: str, pretrained: bool, last_stride: int = 2) -> tuple[nn.Module, int]:
    """The backbone (with a ``features(x) -> (B, dim)`` method) and its feature size."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}' (available: {', '.join(BACKBONES)})")
    backbone = EfficientNetLite(name, last_stride=last_stride)
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
        neck: str = "none",
        flip_test: bool = False,
        last_stride: int = 2,
        pooling: str = "average",
    ):
        super().__init__()
        if neck not in NECKS:
            raise ValueError(f"unknown neck '{neck}' (available: {', '.join(NECKS)})")
        self.backbone_name = backbone
        self.embedding_dim = embedding_dim
        self.flip_test = flip_test
        self.backbone, feature_dim = build_backbone(backbone, pretrained, last_stride)
        self.pool = build_pooling(pooling)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, embedding_dim)
        self.neck = nn.Identity()
        if neck == "batchnorm":
            self.neck = nn.BatchNorm1d(embedding_dim)
            self.neck.bias.requires_grad_(False)  # as in the paper: scale, no shift

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, embedding_dim) projection of the pooled backbone features, unnormalised."""
        return self.head(self.dropout(self.pool(self.backbone.feature_maps(x))))

    def training_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit vectors for the triplet loss, neck features for the identity loss)."""
        projection = self.project(x)
        return F.normalize(projection, p=2, dim=1), self.neck(projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, embedding_dim) unit vectors."""
        if self.flip_test and not self.training:
            # one forward pass over the images and their mirror images together
            both = F.normalize(self.neck(self.project(torch.cat([x, x.flip(3)]))), p=2, dim=1)
            return F.normalize(both[: len(x)] + both[len(x) :], p=2, dim=1)
        return F.normalize(self.neck(self.project(x)), p=2, dim=1)


def build_embedder(
    config: TrainConfig, embedding_dim: int | None = None, pretrained: bool | None = None
) -> Embedder:
    """The network ``config`` describes; a checkpoint passes its own size and no
    ImageNet weights (its weights replace them)."""
    return Embedder(
        backbone=config.backbone,
        embedding_dim=config.embedding_dim if embedding_dim is None else embedding_dim,
        pretrained=config.pretrained if pretrained is None else pretrained,
        dropout=config.dropout,
        neck=config.neck,
        flip_test=config.flip_test,
        last_stride=config.last_stride,
        pooling=config.pooling,
    )
