"""Misfiled faces (nearer another character's trimmed centre than their own), against a
brute-force reference written as loops, and on planted faces of another character."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anime_face_id.misfiled import looks_like, looks_like_by, misfiled, trimmed_centre


def reference_centre(rows: list[np.ndarray], trim: float = 0.2) -> np.ndarray:
    unit = [row / np.linalg.norm(row) for row in rows]
    mean = sum(unit) / len(unit)
    centre = mean / np.linalg.norm(mean)
    keep = math.ceil(len(unit) * (1 - trim))
    if 0 < keep < len(unit):
        nearest = sorted(range(len(unit)), key=lambda i: (1 - float(unit[i] @ centre), i))[:keep]
        mean = sum(unit[i] for i in nearest) / keep
        centre = mean / np.linalg.norm(mean)
    return centre


def reference_looks_like(embeddings: np.ndarray, labels: list[int]) -> list[int]:
    return reference_looks_like_by(embeddings, labels)[0]


def reference_looks_like_by(
    embeddings: np.ndarray, labels: list[int]
) -> tuple[list[int], list[float]]:
    centres = {
        c: reference_centre([e for e, label in zip(embeddings, labels, strict=True) if label == c])
        for c in set(labels)
    }
    answers, margins = [], []
    for embedding, label in zip(embeddings, labels, strict=True):
        unit = embedding / np.linalg.norm(embedding)
        own = float(unit @ centres[label])
        others = {c: float(unit @ centre) for c, centre in centres.items() if c != label}
        best = max(sorted(others), key=lambda c: others[c], default=None)
        answers.append(best if best is not None and others[best] > own else label)
        margins.append(-math.inf if best is None else others[best] - own)
    for c in set(labels):  # a character with every face elsewhere keeps them
        members = [i for i, label in enumerate(labels) if label == c]
        if all(answers[i] != c for i in members):
            for i in members:
                answers[i] = c
    return answers, margins


def reference_misfiled(embeddings: np.ndarray, labels: list[int]) -> list[bool]:
    return [
        answer != label
        for answer, label in zip(reference_looks_like(embeddings, labels), labels, strict=True)
    ]


@pytest.mark.parametrize("seed", range(30))
def test_misfiled_matches_the_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 30))
    labels = rng.integers(0, int(rng.integers(1, 5)), size=size).tolist()
    embeddings = rng.normal(size=(size, 6))
    assert misfiled(embeddings, np.array(labels)).tolist() == reference_misfiled(embeddings, labels)
    answers = looks_like(embeddings, np.array(labels)).tolist()
    assert answers == reference_looks_like(embeddings, labels)
    looks, margins = looks_like_by(embeddings, np.array(labels))
    expected_looks, expected_margins = reference_looks_like_by(embeddings, labels)
    assert looks.tolist() == expected_looks
    assert margins.tolist() == pytest.approx(expected_margins, abs=1e-5)  # float32 rows


def test_faces_of_another_character_are_misfiled_and_the_rest_are_not() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16)) * 3
    labels = np.repeat(np.arange(3), 10)
    embeddings = centres[labels] + rng.normal(size=(30, 16))
    embeddings[[4, 15]] = centres[[2, 0]] + rng.normal(size=(2, 16))  # filed as 0 and 1
    assert np.flatnonzero(misfiled(embeddings, labels)).tolist() == [4, 15]
    assert looks_like(embeddings, labels)[[4, 15]].tolist() == [2, 0]


@pytest.mark.parametrize("seed", range(30))
def test_every_character_keeps_a_face_however_alike_the_characters(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 40))
    labels = rng.integers(0, int(rng.integers(2, 6)), size=size)
    # a few directions shared by every character: many faces nearer another centre
    embeddings = rng.normal(size=(3, 4))[rng.integers(0, 3, size=size)]
    embeddings += rng.normal(size=(size, 4)) * float(rng.uniform(0.05, 1.0))
    kept = ~misfiled(embeddings, labels)
    assert set(labels[kept].tolist()) == set(labels.tolist())


def test_one_character_has_no_other_to_be_filed_under() -> None:
    assert not misfiled(np.random.default_rng(2).normal(size=(5, 4)), np.zeros(5)).any()


def test_the_trimmed_centre_ignores_a_far_outlier() -> None:
    bulk = np.tile([1.0, 0.0, 0.0], (9, 1)) + np.random.default_rng(3).normal(size=(9, 3)) * 0.01
    centre = trimmed_centre(np.vstack([bulk, [[-1.0, 0.2, 0.0]]]))
    assert centre @ np.array([1.0, 0.0, 0.0]) > 0.999
