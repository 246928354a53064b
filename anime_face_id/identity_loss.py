"""The identity loss beside the triplet loss (Luo et al. 2019, "Bag of Tricks and a
Strong Baseline for Deep Person Re-identification"): a linear classifier over the
training characters on the network's neck features, trained with label-smoothed
cross-entropy (Szegedy et al. 2016).

``train.id_head: cosine`` uses a cosine classifier with a margin instead
(cosine_classifier.py). The classifier exists only during training: it names the
training characters, while the embedding must also separate characters added later, so
it is never saved with the model.
Label smoothing keeps it from growing over-confident on ~20 pictures per character.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anime_face_id.config import TrainConfig
from anime_face_id.cosine_classifier import CosineClassifier


class IdentityClassifier(nn.Module):
    """Logits over ``num_classes`` characters; no bias, as in the paper."""

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(feature_dim, num_classes, bias=False)
        nn.init.normal_(self.linear.weight, std=0.001)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(features)  # no margin: the labels change nothing


def make_classifier(config: TrainConfig, feature_dim: int, num_classes: int) -> nn.Module:
    """The training-only classifier that ``train.id_head`` names."""
    if config.id_head == "cosine":
        return CosineClassifier(feature_dim, num_classes, config.id_scale, config.id_margin)
    return IdentityClassifier(feature_dim, num_classes)


def identity_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean cross-entropy against targets (1 - smoothing) on the true class plus
    smoothing / C on every class."""
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"logits must be (B, C) and labels (B,), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)
