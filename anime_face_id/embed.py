"""Embedding a list of images with a network: evaluation, galleries, the baseline.

Images go through ``transforms.preprocess`` (never augmentation), in batches, with the
network in eval mode; the network's train/eval mode is restored afterwards so that the
training loop can call this between epochs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anime_face_id.imaging import load_rgb
from anime_face_id.model.efficientnet_lite import (
    FEATURE_DIM,
    EfficientNetLite0,
    load_imagenet_weights,
)
from anime_face_id.transforms import preprocess


def output_size(model: nn.Module) -> int:
    return int(getattr(model, "output_dim", 0))


def embed_paths(
    model: nn.Module,
    paths: Sequence[str | Path],
    image_size: int,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> torch.Tensor:
    """(N, D) float32 CPU tensor, row i the embedding of ``paths[i]``.

    Files must be readable (check them first with ``dataset.unreadable_images``)."""
    return embed_images(model, paths, image_size, device, batch_size, load=load_rgb)


@torch.inference_mode()
def embed_images(
    model: nn.Module,
    images: Sequence,
    image_size: int,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    load: Callable = lambda image: image,
) -> torch.Tensor:
    """(N, D) float32 CPU tensor for RGB images (arrays or PIL images), or for anything
    ``load`` turns into one, read a batch at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not images:
        return torch.zeros((0, output_size(model)), dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = torch.stack(
                [preprocess(load(item), image_size) for item in images[start : start + batch_size]]
            )
            chunks.append(model(batch.to(device)).float().cpu())
        return torch.cat(chunks)
    finally:
        model.train(was_training)


class ImageNetFeatures(nn.Module):
    """The untrained baseline: EfficientNet-Lite0's pooled ImageNet features, unit length.

    No projection, random or otherwise: this is what the pretrained network knows before
    any training on characters."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = EfficientNetLite0()
        load_imagenet_weights(self.backbone)
        self.output_dim = FEATURE_DIM  # what embed_paths reads (output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.features(x), p=2, dim=1)
