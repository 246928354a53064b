"""Generalised-mean (GeM) pooling, Radenović et al. 2018 ("Fine-tuning CNN Image Retrieval
with No Human Annotation").

``(mean(x^p))^(1/p)`` over each channel's map: p = 1 is average pooling, and p -> infinity
max pooling. Between the two, a channel counts where it fires strongly (an eye's shape, a
hair clip) more than how much of the face it covers, which is what retrieval of the same
character across framings needs. p is learned, from 3 as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

POOLINGS = ("average", "gem")


class GeneralisedMean(nn.Module):
    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        # the maps are non-negative (ReLU6); at an exact 0 the gradient in p is 0 x log 0 = NaN
        self.eps = eps

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C)."""
        p = self.p.clamp(min=1.0)
        maps = maps.clamp(min=self.eps)
        # scaled by each channel's maximum, so x^p stays in [0, 1] at any p (6^50 is no float32)
        top = maps.amax(dim=(2, 3), keepdim=True)
        return top.flatten(1) * (maps / top).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class AveragePool(nn.Module):
    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return maps.mean(dim=(2, 3))


def build_pooling(name: str) -> nn.Module:
    if name == "average":
        return AveragePool()
    if name == "gem":
        return GeneralisedMean()
    raise ValueError(f"unknown pooling '{name}' (available: {', '.join(POOLINGS)})")
