"""What identify would answer for known and unknown faces, against a brute-force reference:
every gallery item compared in a loop, the threshold the equal error rate point of val's
own-character and best-other-character scores."""

from __future__ import annotations

import numpy as np
import pytest

from anime_face_id.evaluation_data import EmbeddedSplit
from anime_face_id.naming_outcomes import naming_report

SPREAD = 1.5  # clusters overlap: some faces are named wrong, some called unknown


def split(name: str, labels: list[str], vectors: np.ndarray) -> EmbeddedSplit:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    paths = [f"data/{name}/{index}.png" for index in range(len(labels))]
    return EmbeddedSplit(paths, np.array(labels, dtype=object), unit.astype(np.float32))


def clustered(rng, centres: dict[str, np.ndarray], labels: list[str], spread: float):
    return np.stack(
        [centres[label] + spread * rng.normal(size=centres[label].shape) for label in labels]
    )


def brute_force_scores(face: np.ndarray, train: EmbeddedSplit) -> dict[str, float]:
    best: dict[str, float] = {}
    for vector, label in zip(train.embeddings, train.labels, strict=True):
        best[label] = max(best.get(label, -np.inf), float(face @ vector))
    return best


def brute_force_threshold(train: EmbeddedSplit, val: EmbeddedSplit) -> float:
    """Every observed score tried; where the two error rates are closest, the middle
    between that score and the next lower one."""
    genuine, impostor = [], []
    for face, label in zip(val.embeddings, val.labels, strict=True):
        scores = brute_force_scores(face, train)
        genuine.append(scores[label])
        impostor.append(max(score for name, score in scores.items() if name != label))
    best, below = None, None
    for candidate in sorted(set(genuine + impostor)):
        false_accept = sum(score >= candidate for score in impostor) / len(impostor)
        false_reject = sum(score < candidate for score in genuine) / len(genuine)
        if best is None or abs(false_accept - false_reject) < best[0]:
            middle = candidate if below is None else (below + candidate) / 2
            best = (abs(false_accept - false_reject), middle)
        below = candidate
    return best[1]


def brute_force_verdict(face: np.ndarray, train: EmbeddedSplit, threshold: float) -> str | None:
    scores = brute_force_scores(face, train)
    name = max(sorted(scores), key=lambda character: scores[character])
    return name if scores[name] >= threshold else None


def test_outcomes_match_a_brute_force_identify() -> None:
    totals = {"named_wrong": 0.0, "called_unknown": 0.0, "open_named": 0.0}
    for seed in range(5):
        outcomes = check_against_brute_force(seed)
        totals["named_wrong"] += outcomes["test"]["named_wrong"]
        totals["called_unknown"] += outcomes["test"]["called_unknown"]
        totals["open_named"] += outcomes["open_set"]["named"]
    # the sets overlap enough that every kind of answer was checked, not only "right"
    assert all(total > 0 for total in totals.values()), totals


def check_against_brute_force(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    names = ["ann", "bea", "cal", "dot"]
    centres = {name: rng.normal(size=16) for name in names}
    unseen = {name: rng.normal(size=16) for name in ("eve", "fay")}
    spread = SPREAD

    def made(name, labels, where):
        return split(name, labels, clustered(rng, where, labels, spread))

    train = made("train", [n for n in names for _ in range(6)], centres)
    val = made("val", [n for n in names for _ in range(3)], centres)
    test = made("test", [n for n in names for _ in range(5)], centres)
    holdout = made("holdout", ["eve"] * 4 + ["fay"] * 4, unseen)

    report = naming_report(train, val, test, holdout, embedder="sha")

    threshold = brute_force_threshold(train, val)
    assert report["calibration"]["threshold"] == pytest.approx(threshold, abs=1e-6)
    assert report["calibration"]["method"] == "val_eer"
    named = [brute_force_verdict(face, train, threshold) for face in test.embeddings]
    right = sum(name == label for name, label in zip(named, test.labels, strict=True))
    unknown = named.count(None)
    assert report["test"] == pytest.approx(
        {
            "named_right": right / 20,
            "called_unknown": unknown / 20,
            "named_wrong": (20 - right - unknown) / 20,
            "faces": 20,
        }
    )
    refused = [brute_force_verdict(face, train, threshold) for face in holdout.embeddings]
    assert report["open_set"] == pytest.approx(
        {
            "called_unknown": refused.count(None) / 8,
            "named": 1 - refused.count(None) / 8,
            "faces": 8,
        }
    )
    return report


def test_separated_characters_are_named_and_strangers_called_unknown() -> None:
    basis = np.eye(8)
    centres = {name: basis[index] for index, name in enumerate(["ann", "bea", "cal"])}
    rng = np.random.default_rng(0)

    def made(name, labels, where, spread=0.05):
        return split(name, labels, clustered(rng, where, labels, spread))

    train = made("train", ["ann", "bea", "cal"] * 4, centres)
    # val: the right character scores about 1, the others about 0: the threshold lies in
    # the gap between, not at its top edge (the lowest val score of the right character)
    val = made("val", ["ann", "bea", "cal"] * 2, centres)
    test = made("test", ["ann", "bea", "cal"] * 3, centres)
    stranger = {"eve": basis[5]}  # orthogonal to every character: scores about 0
    holdout = made("holdout", ["eve"] * 3, stranger)

    report = naming_report(train, val, test, holdout, embedder="sha")

    assert report["test"]["named_right"] == 1.0 and report["test"]["named_wrong"] == 0.0
    assert report["open_set"] == {"called_unknown": 1.0, "named": 0.0, "faces": 3}
    assert 0.3 < report["calibration"]["threshold"] < 0.7


def test_without_held_out_characters_there_is_no_open_set_row() -> None:
    rng = np.random.default_rng(1)
    centres = {name: rng.normal(size=8) for name in ("ann", "bea")}

    def made(name, labels):
        return split(name, labels, clustered(rng, centres, labels, 0.1))

    train, val = made("train", ["ann", "bea"] * 3), made("val", ["ann", "bea"])
    report = naming_report(
        train, val, made("test", ["ann", "bea"]), split("holdout", [], np.zeros((0, 8))), "sha"
    )
    assert "open_set" not in report and report["test"]["faces"] == 2


def test_a_test_character_missing_from_the_gallery_is_an_unknown_face_not_a_wrong_name() -> None:
    basis = np.eye(8)
    centres = {name: basis[index] for index, name in enumerate(["ann", "bea", "cal"])}
    rng = np.random.default_rng(2)

    def made(name, labels, spread=0.05):
        return split(name, labels, clustered(rng, centres, labels, spread))

    # every training image of cal was unreadable: cal has val and test faces only
    train = made("train", ["ann", "bea"] * 4)
    val = made("val", ["ann", "bea"] * 2)
    test = made("test", ["ann", "bea", "cal"] * 3)

    report = naming_report(train, val, test, split("holdout", [], np.zeros((0, 8))), "sha")

    assert report["test"] == {
        "named_right": 1.0,
        "called_unknown": 0.0,
        "named_wrong": 0.0,
        "faces": 6,
    }
    assert report["test_characters_not_in_gallery"] == {
        "called_unknown": 1.0,
        "named": 0.0,
        "faces": 3,
    }
    assert "open_set" not in report
