"""The faces of a P x K batch to leave out of the losses: each character's outliers.

A face filed under the wrong character (one the reviewer let through) is, for every one of
its batch-mates, the farthest positive, so batch-hard mining trains on it above all; as an
anchor, every positive it is pulled towards is a face of somebody else. Within the batch it
is also the face farthest, on average, from the rest of its character's faces, which is
how it is found here: each character's ``per_character`` pictures with the largest mean
distance to their batch-mates are left out. A character keeps at least two pictures, so
its faces still form a positive pair.

A character with fewer pictures than K fills its places with repeats (two views of one
file). Distances are therefore measured to the other *pictures* only, and a picture left
out takes all its views with it: two views of a misnamed face are close to each other,
and counting that closeness would hide it behind a clean face.

With ``rule="misfiled"`` a farthest picture is left out only when it is also nearer (mean
distance) to another character's faces in the batch than to its own character's: the test
of ``misfiled.py``, within one batch. On clean data a trained embedding rarely fails it,
so the losses keep nearly every face, where ``"farthest"`` always gives up
``per_character`` of each character's K.
"""

from __future__ import annotations

from typing import Literal

import torch

Rule = Literal["farthest", "misfiled"]


def kept_faces(
    distances: torch.Tensor,
    labels: torch.Tensor,
    per_character: int,
    pictures: torch.Tensor | None = None,
    rule: Rule = "farthest",
) -> torch.Tensor:
    """(B,) bool on the CPU: True for the faces to train on, given the batch's (B, B)
    distances (the caller moves it, and can count it without a device sync).

    ``pictures`` numbers each face's source file (equal numbers: views of one picture);
    without it every face is its own picture. ``rule``: see the module docstring."""
    keep = torch.ones(len(labels), dtype=torch.bool)
    if per_character > 0:
        # small (B, B) work: one copy to the CPU instead of a sync per character
        distances, labels = distances.detach().cpu(), labels.cpu()
        pictures = torch.arange(len(labels)) if pictures is None else pictures.cpu()
        characters = labels.unique()
        # (B, characters): each face's mean distance to each character's faces, once a batch
        to_character = (
            torch.stack([distances[:, labels == c].mean(dim=1) for c in characters], dim=1)
            if rule == "misfiled"
            else None
        )
        for index, label in enumerate(characters):
            members = (labels == label).nonzero(as_tuple=True)[0]
            nearer_another = None
            if to_character is not None:
                nearer_another = _nearest_other_character(to_character[members], index)
            farthest = _farthest_pictures(
                distances, members, pictures, per_character, nearer_another
            )
            for picture in farthest:
                keep[members[pictures[members] == picture]] = False
    return keep


def _nearest_other_character(to_character: torch.Tensor, own: int) -> torch.Tensor:
    """(M,) for each of one character's M faces, its smallest mean distance to another
    character's faces (inf when the batch holds no other character)."""
    others = to_character.clone()
    others[:, own] = float("inf")
    return others.min(dim=1).values


def _per_picture(per_face: torch.Tensor, own: torch.Tensor, distinct: torch.Tensor):
    """The mean of ``per_face`` over each picture's views, in ``distinct`` order."""
    return torch.stack([per_face[own == picture].mean() for picture in distinct])


def _farthest_pictures(
    distances: torch.Tensor,
    members: torch.Tensor,
    pictures: torch.Tensor,
    count: int,
    nearer_another: torch.Tensor | None = None,
) -> list[int]:
    """Of one character's faces, the ``count`` pictures farthest from the others, keeping 2;
    with ``nearer_another`` (each member's mean distance to its nearest other character),
    only pictures nearer that character than their own are candidates."""
    own = pictures[members]
    distinct = own.unique()
    count = min(count, len(distinct) - 2)
    if count <= 0:
        return []
    block = distances[members][:, members]
    others = own.unsqueeze(0) != own.unsqueeze(1)  # pairs of two different pictures
    per_face = (block * others).sum(dim=1) / others.sum(dim=1)
    per_picture = _per_picture(per_face, own, distinct)
    if nearer_another is not None:
        candidate = _per_picture(nearer_another, own, distinct) < per_picture
        distinct, per_picture = distinct[candidate], per_picture[candidate]
        count = min(count, len(distinct))
    return distinct[per_picture.topk(count).indices].tolist()
