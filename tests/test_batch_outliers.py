"""Which faces of a P x K batch the losses leave out, against a brute-force reference
written as loops, and on a batch with a planted mislabelled face."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anime_face_id.batch_outliers import kept_faces
from anime_face_id.config import TrainConfig
from anime_face_id.losses import pairwise_distances


def reference_kept(embeddings: np.ndarray, labels: list[int], per_character: int) -> list[bool]:
    keep = [True] * len(labels)
    for label in set(labels):
        members = [i for i, other in enumerate(labels) if other == label]
        drop = min(per_character, len(members) - 2)
        if drop <= 0:
            continue
        mean_distance = {
            i: sum(float(np.linalg.norm(embeddings[i] - embeddings[j])) for j in members if j != i)
            / (len(members) - 1)
            for i in members
        }
        for i in sorted(members, key=lambda i: -mean_distance[i])[:drop]:
            keep[i] = False
    return keep


@pytest.mark.parametrize("seed", range(40))
def test_kept_faces_match_the_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 20))
    labels = rng.integers(0, int(rng.integers(1, 6)), size=size).tolist()
    embeddings = rng.normal(size=(size, 4)).astype(np.float32)
    per_character = int(rng.integers(0, 4))
    kept = kept_faces(
        pairwise_distances(torch.from_numpy(embeddings)), torch.tensor(labels), per_character
    )
    assert kept.tolist() == reference_kept(embeddings, labels, per_character)


def test_a_face_filed_under_the_wrong_character_is_the_one_left_out() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5  # three characters, four faces each
    labels = [c for c in range(3) for _ in range(4)]
    embeddings = np.stack([centres[c] + rng.normal(size=8) * 0.3 for c in labels])
    embeddings[5] = centres[2] + rng.normal(size=8) * 0.3  # character 2's face, filed as 1
    kept = kept_faces(
        pairwise_distances(torch.from_numpy(embeddings)), torch.tensor(labels), per_character=1
    )
    assert not kept[5]
    assert kept.sum() == 12 - 3  # one per character, the farthest of a clean one too


def test_a_character_keeps_two_faces_and_zero_keeps_every_face() -> None:
    distances = pairwise_distances(torch.randn(7, 3))
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3])
    assert kept_faces(distances, labels, per_character=0).all()
    kept = kept_faces(distances, labels, per_character=5)
    assert kept[[0, 1, 5, 6]].all()  # two or fewer: nothing to spare
    assert kept[2:5].sum() == 2


def test_the_recipe_takes_batch_outliers_and_refuses_a_negative_count() -> None:
    assert TrainConfig(batch_outliers=1).batch_outliers == 1
    with pytest.raises(ValueError, match="batch_outliers"):
        TrainConfig(batch_outliers=-1)
