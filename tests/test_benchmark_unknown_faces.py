"""benchmarks/unknown_faces.py: knownness rules against brute-force references, its
"best" rule calibrated exactly as the package stage calibrates the unknown-face threshold,
and the script end to end on projects written here (with held-out characters)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anime_face_id.calibration import calibration_scores
from anime_face_id.verification import eer_threshold
from tests.support.scripts import script_module
from tests.test_benchmark_rescoring import run_script, write_splits

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "unknown_faces.py"


@pytest.fixture(scope="module")
def unknown():
    with script_module(SCRIPT, "unknown_faces_benchmark") as module:
        yield module


def faces(rng, centres: np.ndarray, per_character: int, spread: float, first_label: int = 0):
    """Unit embeddings around the given centres, labelled first_label, first_label + 1, ..."""
    labels = np.repeat(np.arange(len(centres)) + first_label, per_character)
    x = np.repeat(centres, per_character, axis=0) + rng.normal(0, spread, (len(labels), 16))
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def character_best(query: np.ndarray, gallery: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    return {
        int(c): max(
            float(query @ g) for g, label in zip(gallery, labels, strict=True) if label == c
        )
        for c in np.unique(labels)
    }


@pytest.mark.parametrize("seed", range(4))
def test_rules_match_brute_force(unknown, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 16))
    gallery, labels = faces(rng, centres, 4, spread=1.2)
    queries, _ = faces(rng, centres, 2, spread=1.2)
    similarity = queries @ gallery.T
    values = {
        name: unknown.knownness_of(rule, similarity, labels, 5)
        for name, rule in unknown.RULES.items()
    }
    for q, query in enumerate(queries):
        scores = character_best(query, gallery, labels)
        ranked = sorted(scores.values(), reverse=True)
        named = max(scores, key=scores.get)
        others = [s for c, s in scores.items() if c != named]
        own = sorted(
            (float(query @ g) for g, c in zip(gallery, labels, strict=True) if c == named),
            reverse=True,
        )
        expected = {
            "best (identify today)": ranked[0],
            "margin s1 - s2": ranked[0] - ranked[1],
            "s1 - 0.5 x s2": ranked[0] - 0.5 * ranked[1],
            "z-score of s1": (ranked[0] - np.mean(others)) / np.std(others),
            "mean of the best character's top 2": np.mean(own[:2]),
            "mean of the best character's top 3": np.mean(own[:3]),
        }
        for name, (knownness, chosen) in values.items():
            assert chosen[q] == named
            assert knownness[q] == pytest.approx(expected[name], abs=1e-9), name


@pytest.mark.parametrize("seed", range(4))
def test_best_is_calibrated_as_the_package_calibrates(unknown, seed):
    """The baseline row is identify's threshold: the same genuine and impostor scores as
    anime_face_id.calibration, so the same equal-error threshold."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 16))
    gallery, labels = faces(rng, centres, 5, spread=1.4)
    val, truth = faces(rng, centres, 3, spread=1.4)
    genuine, impostor = unknown.val_calibration_scores(
        unknown.best, val @ gallery.T, labels, 6, truth
    )
    package_genuine, package_impostor = calibration_scores(
        gallery, labels, 6, val, truth, np.zeros((0, 16))
    )
    assert np.allclose(np.sort(genuine), np.sort(package_genuine), atol=1e-6)
    assert np.allclose(np.sort(impostor), np.sort(package_impostor), atol=1e-6)
    assert eer_threshold(genuine, impostor)[0] == pytest.approx(
        eer_threshold(package_genuine, package_impostor)[0], abs=1e-6
    )


def test_the_margin_impostor_is_scored_without_its_own_character(unknown):
    """A val face of character 0 against a gallery of 0, 1 and 2: genuine margin is its own
    score minus the best other; impostor margin is the best of 1 and 2 minus the other."""
    gallery = np.eye(3)
    labels = np.array([0, 1, 2])
    face = np.array([[0.9, 0.4, 0.1]])
    genuine, impostor = unknown.val_calibration_scores(
        unknown.best_minus(1.0), face @ gallery.T, labels, 3, np.array([0])
    )
    assert genuine == pytest.approx([0.5]) and impostor == pytest.approx([0.3])


def test_roc_auc_matches_counting_pairs(unknown):
    rng = np.random.default_rng(0)
    positive, negative = rng.integers(0, 6, 30).astype(float), rng.integers(0, 5, 20).astype(float)
    pairs = [(p > n) + 0.5 * (p == n) for p in positive for n in negative]
    assert unknown.roc_auc(positive, negative) == pytest.approx(np.mean(pairs))


def write_project(root: Path, rng, held_out: int) -> None:
    centres = rng.normal(size=(4 + held_out, 16))
    known, unseen = centres[:4], centres[4:]
    splits = {}
    for name, per_character in (("train", 5), ("val", 3), ("test", 3)):
        x, labels = faces(rng, known, per_character, spread=1.3)
        splits[name] = (x, np.array([f"c{i}" for i in labels]))
    x, labels = faces(rng, unseen, 4, spread=1.3, first_label=4)
    splits["holdout"] = (x, np.array([f"c{i}" for i in labels]))
    write_splits(root, splits, rng)


def test_script_counts_every_face_once_per_rule(tmp_path, unknown):
    rng = np.random.default_rng(5)
    projects = [tmp_path / "seed-0", tmp_path / "seed-1"]
    for root in projects:
        write_project(root, rng, held_out=2)
    result = run_script(SCRIPT, *projects, "--json", tmp_path / "u.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "u.json").read_text())
    assert set(report["rules"]) == set(unknown.RULES)
    for rule in report["rules"].values():
        assert len(rule["auc_per_project"]) == 2
        assert all(0.0 <= auc <= 1.0 for auc in rule["auc_per_project"])
        for project in rule["projects"]:
            assert project["test_faces"] == 12 and project["held_faces"] == 8
            for point in ("eer", "cost"):
                counts = project[point]
                assert counts["test_right"] + counts["test_unknown"] + counts["test_wrong"] == 12
                assert 0 <= counts["held_unknown"] <= 8
    lines = result.stdout.splitlines()
    assert lines[1].startswith("best (identify today)") and len(lines) == 1 + len(unknown.RULES)


def test_a_project_without_held_out_characters_is_refused(tmp_path):
    root = tmp_path / "project"
    write_project(root, np.random.default_rng(0), held_out=0)
    result = run_script(SCRIPT, root)
    assert result.returncode != 0
    assert "no held-out characters" in result.stderr
