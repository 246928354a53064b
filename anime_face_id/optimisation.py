"""The optimiser and its learning-rate schedule: AdamW with the head and the pretrained
backbone in two groups, linear warm-up, then cosine decay (or constant)."""

from __future__ import annotations

import math

import torch

from anime_face_id.config import TrainConfig

WARMUP_START = 0.1  # warm-up starts at lr x this


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate before optimiser step ``step`` (0-based)."""
    if step < warmup_steps:
        return WARMUP_START + (1.0 - WARMUP_START) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(
    model: torch.nn.Module, config: TrainConfig, extra: torch.nn.Module | None = None
) -> torch.optim.Optimizer:
    """AdamW with the projection head (and ``extra``, the identity classifier) at ``lr``
    (group 0) and the pretrained backbone at ``lr x backbone_lr_factor`` (group 1); the
    schedule scales both alike. Frozen parameters are left out."""
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    head = [param for name, param in named if not name.startswith("backbone.")]
    backbone = [param for name, param in named if name.startswith("backbone.")]
    if extra is not None:
        head += list(extra.parameters())
    return torch.optim.AdamW(
        [
            {"params": head, "lr": config.lr},
            {"params": backbone, "lr": config.lr * config.backbone_lr_factor},
        ],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
