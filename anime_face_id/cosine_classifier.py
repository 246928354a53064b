"""A cosine classifier with an additive margin for the identity loss (CosFace, Wang et al.
2018; AM-Softmax, Wang et al. 2018), chosen with ``train.id_head: cosine``.

Its logits are ``scale * cos(feature, class weight)``, minus ``margin`` on the true class
when the labels are given (training does; naming uses no margin). Naming a face compares
cosines of unit embeddings, so a classifier on cosines trains the geometry that
identification uses, and the margin asks every training face to sit closer to its own
character than to any other by at least that much cosine, where the linear classifier
(identity_loss.IdentityClassifier) is content with any lead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineClassifier(nn.Module):
    def __init__(self, feature_dim: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__()
        if scale <= 0 or not 0.0 <= margin < 1.0:
            raise ValueError(f"need scale > 0 and margin in [0, 1), got {scale} and {margin}")
        self.weight = nn.Parameter(torch.randn(num_classes, feature_dim) * 0.01)
        self.scale = scale
        self.margin = margin

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, C); with ``labels``, the margin is taken off each true class."""
        cosines = F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).T
        if labels is not None and self.margin:
            cosines = cosines - self.margin * F.one_hot(labels, cosines.shape[1]).to(cosines)
        return self.scale * cosines
