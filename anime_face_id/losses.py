"""Triplet losses on a batch of embeddings (Hermans, Beyer & Leibe 2017, arXiv 1703.07737).

Everything is vectorised over the batch with masks; no Python loops over pairs. An anchor
takes part only when the batch holds both a positive (another item of its class) and a
negative for it; a batch with no such anchor gives a zero loss that still belongs to the
graph (so ``backward()`` works) and ``num_valid == 0``, never NaN.

``margin`` is a positive float (hinge: max(0, margin + d_ap - d_an)) or ``"soft"``
(the paper's soft margin: softplus(d_ap - d_an)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F

from anime_face_id.config import TrainConfig

Margin = float | Literal["soft"]


@dataclass(frozen=True)
class LossStats:
    """The loss and what it saw, for logging.

    ``active_fraction``: fraction of valid anchors (batch-hard) or triplets (batch-all)
    that still violate the margin; with the soft margin, which is never exactly zero,
    those whose positive is not yet closer than their negative.
    ``mean_positive_distance`` / ``mean_negative_distance``: mean d(a, p) and d(a, n) over
    what the loss used (hardest pairs for batch-hard, all valid triplets for batch-all);
    NaN when ``num_valid`` is 0.
    ``num_valid``: anchors (batch-hard) or triplets (batch-all) the loss averages over.
    """

    loss: torch.Tensor
    active_fraction: float
    mean_positive_distance: float
    mean_negative_distance: float
    num_valid: int


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, B) euclidean distances with finite gradients everywhere.

    Computed from explicit differences rather than the |a|^2 + |b|^2 - 2ab expansion, so
    identical embeddings give exactly 0 instead of a rounding residue; sqrt's infinite
    slope at 0 is avoided by routing zero entries through sqrt(1) and masking them out.
    """
    differences = embeddings.unsqueeze(1) - embeddings.unsqueeze(0)
    squared = differences.pow(2).sum(dim=-1)
    is_zero = squared <= 0
    safe = torch.where(is_zero, torch.ones_like(squared), squared)
    return torch.sqrt(safe) * (~is_zero)


def _label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) boolean (B, B) masks; an item is not its own positive."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    not_self = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & not_self, ~same


def _triplet_terms(gap: torch.Tensor, margin: Margin) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-triplet loss and "still active" flags from gap = d_ap - d_an."""
    if margin == "soft":
        return F.softplus(gap), gap > 0
    hinge = F.relu(gap + float(margin))
    return hinge, hinge > 0


def _zero_loss(embeddings: torch.Tensor) -> LossStats:
    # multiplying keeps the graph, so a training step on a degenerate batch is a no-op
    # rather than an error
    loss = embeddings.sum() * 0.0
    return LossStats(loss, 0.0, math.nan, math.nan, 0)


def _check_inputs(embeddings: torch.Tensor, labels: torch.Tensor, margin: Margin) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (B, D), got shape {tuple(embeddings.shape)}")
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"labels must be ({embeddings.shape[0]},), got shape {tuple(labels.shape)}"
        )
    if margin != "soft" and not float(margin) > 0:
        raise ValueError(f"margin must be 'soft' or a positive number, got {margin!r}")


def batch_hard_triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: Margin
) -> LossStats:
    """For every anchor, its farthest positive against its closest negative."""
    _check_inputs(embeddings, labels, margin)
    distances = pairwise_distances(embeddings)
    positive, negative = _label_masks(labels)
    valid = positive.any(dim=1) & negative.any(dim=1)
    if not valid.any():
        return _zero_loss(embeddings)
    # Masked-out entries are pushed beyond the reach of max / min instead of being
    # indexed away, which keeps the whole computation one batched op.
    hardest_positive = torch.where(positive, distances, torch.full_like(distances, -math.inf)).amax(
        dim=1
    )
    hardest_negative = torch.where(negative, distances, torch.full_like(distances, math.inf)).amin(
        dim=1
    )
    hardest_positive, hardest_negative = hardest_positive[valid], hardest_negative[valid]
    terms, active = _triplet_terms(hardest_positive - hardest_negative, margin)
    return LossStats(
        loss=terms.mean(),
        active_fraction=active.float().mean().item(),
        mean_positive_distance=hardest_positive.detach().mean().item(),
        mean_negative_distance=hardest_negative.detach().mean().item(),
        num_valid=int(valid.sum().item()),
    )


def batch_all_triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: Margin
) -> LossStats:
    """Mean over every valid (anchor, positive, negative) triplet, zero terms included
    (the paper's BA; B^3 memory, fine for P x K batches)."""
    _check_inputs(embeddings, labels, margin)
    distances = pairwise_distances(embeddings)
    positive, negative = _label_masks(labels)
    valid = positive.unsqueeze(2) & negative.unsqueeze(1)  # [a, p, n]
    if not valid.any():
        return _zero_loss(embeddings)
    anchor, pos, neg = valid.nonzero(as_tuple=True)
    d_ap = distances[anchor, pos]
    d_an = distances[anchor, neg]
    terms, active = _triplet_terms(d_ap - d_an, margin)
    return LossStats(
        loss=terms.mean(),
        active_fraction=active.float().mean().item(),
        mean_positive_distance=d_ap.detach().mean().item(),
        mean_negative_distance=d_an.detach().mean().item(),
        num_valid=len(anchor),
    )


LossFunction = Callable[[torch.Tensor, torch.Tensor], LossStats]

LOSSES: dict[str, Callable[..., LossStats]] = {
    "batch_hard": batch_hard_triplet_loss,
    "batch_all": batch_all_triplet_loss,
}


def make_loss(config: TrainConfig) -> LossFunction:
    """``loss(embeddings, labels) -> LossStats`` as configured by ``train.loss/margin``."""
    margin: Margin = "soft" if config.margin == "soft" else float(config.margin)
    return partial(LOSSES[config.loss], margin=margin)
