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
* ``append_features``: in eval mode the embedding is followed by ``append_weight`` times
  the unit-length pooled backbone features, of the trained backbone (``"trained"``: no
  extra work) or of a frozen copy of the untrained ImageNet backbone (``"imagenet"``: a
  second backbone pass), and the whole vector is normalised again. The projection keeps
  what tells the training characters apart and drops much of what tells unseen ones
  apart; the pooled features keep it. The losses never see the appended part, so
  training is the same with or without it, and ``embedding_dim`` stays the projection's
  size while ``output_dim`` is the length of the vectors the network gives.
"""

from __future__ import annotations

import typing

import torch
import torch.nn.functional as F
from torch import nn

from anime_face_id.config import AppendedFeatures, Neck, TrainConfig
from anime_face_id.model.efficientnet_lite import (
    FEATURE_DIM,
    VARIANTS,
    EfficientNetLite,
    load_imagenet_weights,
)
from anime_face_id.model.pooling import build_pooling

BACKBONES = tuple(VARIANTS)
NECKS = typing.get_args(Neck)
APPENDED = typing.get_args(AppendedFeatures)


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
        append_features: str = "none",
        append_weight: float = 1.0,
    ):
        super().__init__()
        if neck not in NECKS:
            raise ValueError(f"unknown neck '{neck}' (available: {', '.join(NECKS)})")
        if append_features not in APPENDED:
            raise ValueError(
                f"unknown append_features '{append_features}' (available: {', '.join(APPENDED)})"
            )
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
        self.append_features = append_features
        self.append_weight = append_weight
        self.output_dim = embedding_dim + (feature_dim if append_features != "none" else 0)
        if append_features == "imagenet":
            # its weights are saved with the rest, so a checkpoint needs no ImageNet file;
            # frozen, so the optimiser (trainable parameters only) never sees it
            self.imagenet, _ = build_backbone(backbone, pretrained)
            self.imagenet.requires_grad_(False)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) pooled backbone features."""
        return self.pool(self.backbone.feature_maps(x))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(B, embedding_dim) projection of the pooled backbone features, unnormalised."""
        return self.head(self.dropout(self.pooled(x)))

    def training_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit vectors for the triplet loss, neck features for the identity loss)."""
        projection = self.project(x)
        return F.normalize(projection, p=2, dim=1), self.neck(projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, output_dim) unit vectors."""
        if self.training:
            return F.normalize(self.neck(self.project(x)), p=2, dim=1)
        # one forward pass over the images and their mirror images together
        images = torch.cat([x, x.flip(3)]) if self.flip_test else x
        pooled = self.pooled(images)
        vectors = F.normalize(self.neck(self.head(self.dropout(pooled))), p=2, dim=1)
        if self.append_features != "none":
            if self.append_features == "imagenet":
                pooled = self.imagenet.features(images)
            appended = self.append_weight * F.normalize(pooled, p=2, dim=1)
            vectors = torch.cat([vectors, appended], dim=1)
        if self.flip_test:
            vectors = vectors[: len(x)] + vectors[len(x) :]
        return F.normalize(vectors, p=2, dim=1)


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
        append_features=config.append_features,
        append_weight=config.append_weight,
    )
