"""Which faces of a P x K batch the losses leave out, against a brute-force reference
written as loops, and on a batch with a planted mislabelled face."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anime_face_id.batch_outliers import kept_faces
from anime_face_id.config import TrainConfig
from anime_face_id.losses import pairwise_distances


def reference_kept(
    embeddings: np.ndarray,
    labels: list[int],
    per_character: int,
    pictures: list[int],
    rule: str = "farthest",
) -> list[bool]:
    def distance(i: int, j: int) -> float:
        return float(np.linalg.norm(embeddings[i] - embeddings[j]))

    keep = [True] * len(labels)
    for label in set(labels):
        members = [i for i, other in enumerate(labels) if other == label]
        own_pictures = sorted({pictures[i] for i in members})
        drop = min(per_character, len(own_pictures) - 2)
        if drop <= 0:
            continue
        face_distance, face_elsewhere = {}, {}
        for i in members:
            others = [j for j in members if pictures[j] != pictures[i]]
            face_distance[i] = sum(distance(i, j) for j in others) / len(others)
            to_characters = [
                np.mean([distance(i, j) for j in range(len(labels)) if labels[j] == other])
                for other in set(labels) - {label}
            ]
            face_elsewhere[i] = min(to_characters, default=float("inf"))
        picture_distance = {
            picture: np.mean([face_distance[i] for i in members if pictures[i] == picture])
            for picture in own_pictures
        }
        candidates = own_pictures
        if rule == "misfiled":
            candidates = [
                picture
                for picture in own_pictures
                if np.mean([face_elsewhere[i] for i in members if pictures[i] == picture])
                < picture_distance[picture]
            ]
        for picture in sorted(candidates, key=lambda p: -picture_distance[p])[:drop]:
            for i in members:
                if pictures[i] == picture:
                    keep[i] = False
    return keep


@pytest.mark.parametrize("seed", range(40))
def test_kept_faces_match_the_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 20))
    labels = rng.integers(0, int(rng.integers(1, 6)), size=size).tolist()
    embeddings = rng.normal(size=(size, 4)).astype(np.float32)
    per_character = int(rng.integers(0, 4))
    # views of one picture share a number, always within one character
    pictures = [label * 100 + int(rng.integers(0, 4)) for label in labels]
    distances = pairwise_distances(torch.from_numpy(embeddings))
    kept = kept_faces(distances, torch.tensor(labels), per_character, torch.tensor(pictures))
    assert kept.tolist() == reference_kept(embeddings, labels, per_character, pictures)
    without_numbers = kept_faces(distances, torch.tensor(labels), per_character)
    every_face_its_own = list(range(size))
    assert without_numbers.tolist() == reference_kept(
        embeddings, labels, per_character, every_face_its_own
    )


@pytest.mark.parametrize("seed", range(40))
def test_the_misfiled_rule_matches_the_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    size = int(rng.integers(1, 20))
    labels = rng.integers(0, int(rng.integers(1, 6)), size=size).tolist()
    # clustered enough that some faces pass the test and some fail it
    centres = rng.normal(size=(6, 4)) * float(rng.uniform(0.0, 3.0))
    embeddings = np.stack([centres[c] + rng.normal(size=4) for c in labels]).astype(np.float32)
    per_character = int(rng.integers(0, 4))
    pictures = [label * 100 + int(rng.integers(0, 4)) for label in labels]
    distances = pairwise_distances(torch.from_numpy(embeddings))
    kept = kept_faces(
        distances, torch.tensor(labels), per_character, torch.tensor(pictures), "misfiled"
    )
    assert kept.tolist() == reference_kept(embeddings, labels, per_character, pictures, "misfiled")


def test_the_misfiled_rule_keeps_a_clean_batch_and_leaves_out_the_misnamed_face() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5
    labels = [c for c in range(3) for _ in range(4)]
    embeddings = np.stack([centres[c] + rng.normal(size=8) * 0.3 for c in labels])
    clean = pairwise_distances(torch.from_numpy(embeddings))
    assert kept_faces(clean, torch.tensor(labels), 1, rule="misfiled").all()
    assert kept_faces(clean, torch.tensor(labels), 1).sum() == 12 - 3  # farthest: always 3
    embeddings[5] = centres[2] + rng.normal(size=8) * 0.3  # character 2's face, filed as 1
    noisy = pairwise_distances(torch.from_numpy(embeddings))
    kept = kept_faces(noisy, torch.tensor(labels), 1, rule="misfiled")
    assert (~kept).nonzero().flatten().tolist() == [5]


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


def test_two_views_of_a_misnamed_picture_are_both_left_out_not_a_clean_face() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(2, 8)) * 5
    # character 0 has three pictures in the batch, the third a face of character 1 drawn
    # twice (two views, close together); character 1 has four clean pictures
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    pictures = [0, 1, 2, 2, 3, 4, 5, 6]
    embeddings = np.stack([centres[c] + rng.normal(size=8) * 0.3 for c in labels])
    embeddings[2] = centres[1] + rng.normal(size=8) * 0.3
    embeddings[3] = embeddings[2] + rng.normal(size=8) * 0.05
    distances = pairwise_distances(torch.from_numpy(embeddings))
    kept = kept_faces(distances, torch.tensor(labels), 1, torch.tensor(pictures))
    assert kept[:4].tolist() == [True, True, False, False]
    # counted as four pictures, the two views hide each other and a clean face goes
    assert kept_faces(distances, torch.tensor(labels), 1)[:4].tolist() != [True, True, False, False]


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
    assert TrainConfig(k=4, batch_outliers=2).batch_outliers == 2
    with pytest.raises(ValueError, match=r"at most k - 2 \(2\).*raise train.k"):
        TrainConfig(k=4, batch_outliers=3)
