"""The faces of a P x K batch to leave out of the losses: each character's outliers.

A face filed under the wrong character (one the reviewer let through) is, for every one of
its batch-mates, the farthest positive, so batch-hard mining trains on it above all; as an
anchor, every positive it is pulled towards is a face of somebody else. Within the batch it
is also the face farthest, on average, from the rest of its character's faces, which is
how it is found here: each character's ``per_character`` faces with the largest mean
distance to their batch-mates are left out. A character keeps at least two faces, so its
faces still form a positive pair.
"""

from __future__ import annotations

import torch


def kept_faces(distances: torch.Tensor, labels: torch.Tensor, per_character: int) -> torch.Tensor:
    """(B,) bool: True for the faces to train on, given the batch's (B, B) distances."""
    keep = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
    if per_character <= 0:
        return keep
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    mates = same.sum(dim=1) - 1  # each face's batch-mates of its own character
    mean_to_mates = (distances * same).sum(dim=1) / mates.clamp(min=1)
    for label in labels.unique():
        members = (labels == label).nonzero(as_tuple=True)[0]
        drop = min(per_character, len(members) - 2)
        if drop > 0:
            farthest = mean_to_mates[members].topk(drop).indices
            keep[members[farthest]] = False
    return keep
