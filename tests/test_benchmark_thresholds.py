"""benchmarks/thresholds.py: the unknown-face threshold calibrated three ways, each against a
brute-force reference (every score a loop over gallery faces), the default way against
evaluate's own ``naming`` report, and the script end to end on projects written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anime_face_id.evaluation_data import EmbeddedSplit
from anime_face_id.naming_outcomes import naming_report
from anime_face_id.verification import eer_threshold
from tests.support.scripts import script_module
from tests.test_benchmark_rescoring import run_script, write_splits
from tests.test_benchmark_unknown_faces import faces

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "thresholds.py"


@pytest.fixture(scope="module")
def thresholds():
    with script_module(SCRIPT, "thresholds_benchmark") as module:
        yield module


def synthetic_splits(seed: int, held_out: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Four trained characters and ``held_out`` unseen ones, overlapping enough that every
    outcome happens (named right, wrong, unknown)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4 + held_out, 16))
    splits = {}
    for name, per_character in (("train", 5), ("val", 3), ("test", 4)):
        x, labels = faces(rng, centres[:4], per_character, spread=1.4)
        splits[name] = (x.astype(np.float32), np.array([f"c{i}" for i in labels]))
    x, labels = faces(rng, centres[4:], 3, spread=1.4, first_label=4)
    splits["holdout"] = (x.astype(np.float32), np.array([f"c{i}" for i in labels]))
    return splits


def as_embedded(splits: dict) -> dict[str, EmbeddedSplit]:
    return {
        name: EmbeddedSplit([f"{name}/{i}" for i in range(len(labels))], labels, x)
        for name, (x, labels) in splits.items()
    }


def best_by_character(face: np.ndarray, gallery: list[tuple[np.ndarray, str]]) -> dict:
    scores: dict[str, float] = {}
    for vector, character in gallery:
        similarity = float(np.dot(face.astype(np.float64), vector.astype(np.float64)))
        scores[character] = max(scores.get(character, -np.inf), similarity)
    return scores


def brute_force(splits: dict, gallery_splits: tuple[str, ...], impostor_characters, unseen):
    """Outcomes computed face by face: genuine and impostor val scores against the training
    faces, the held-out ``impostor_characters``' best scores, the equal-error threshold,
    then every test face and every ``unseen`` held-out face named against the gallery."""
    train = list(zip(*splits["train"], strict=True))
    genuine, impostor = [], []
    for face, character in zip(*splits["val"], strict=True):
        scores = best_by_character(face, train)
        genuine.append(scores[character])
        impostor.append(max(s for c, s in scores.items() if c != character))
    for face, character in zip(*splits["holdout"], strict=True):
        if character in impostor_characters:
            impostor.append(max(best_by_character(face, train).values()))
    threshold = eer_threshold(np.array(genuine), np.array(impostor))[0]
    gallery = [pair for name in gallery_splits for pair in zip(*splits[name], strict=True)]

    def named(face):
        scores = best_by_character(face, gallery)
        best = max(scores, key=scores.get)
        return best if scores[best] >= threshold else None

    test = [(named(face), character) for face, character in zip(*splits["test"], strict=True)]
    held = [named(face) for face, c in zip(*splits["holdout"], strict=True) if c in unseen]
    return {
        "named_right": sum(name == truth for name, truth in test) / len(test),
        "called_unknown": sum(name is None for name, _ in test) / len(test),
        "named_wrong": sum(name not in (None, truth) for name, truth in test) / len(test),
        "unseen_called_unknown": sum(name is None for name in held) / len(held) if held else None,
        "threshold": threshold,
    }


def assert_same(measured: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert measured[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("seed", range(4))
def test_val_alone_gives_what_evaluates_naming_report_gives(thresholds, seed):
    splits = synthetic_splits(seed)
    measured = thresholds.val_alone(as_embedded(splits))
    embedded = as_embedded(splits)
    report = naming_report(*(embedded[n] for n in ("train", "val", "test", "holdout")), "x")
    assert measured["named_right"] == report["test"]["named_right"]
    assert measured["called_unknown"] == report["test"]["called_unknown"]
    assert measured["unseen_called_unknown"] == report["open_set"]["called_unknown"]
    assert measured["threshold"] == report["calibration"]["threshold"]
    everything = {"c4", "c5", "c6", "c7"}
    assert_same(measured, brute_force(splits, ("train",), set(), everything))


@pytest.mark.parametrize("seed", range(4))
def test_half_the_held_out_calibrate_and_the_other_half_is_measured_both_ways(thresholds, seed):
    splits = synthetic_splits(seed)
    measured = thresholds.val_and_held_out_half(as_embedded(splits))
    ways = [
        brute_force(splits, ("train",), {"c4", "c5"}, {"c6", "c7"}),
        brute_force(splits, ("train",), {"c6", "c7"}, {"c4", "c5"}),
    ]
    assert_same(measured, {key: np.mean([way[key] for way in ways]) for key in ways[0]})


@pytest.mark.parametrize("seed", range(4))
def test_the_bigger_gallery_holds_val_and_keeps_the_val_alone_threshold(thresholds, seed):
    splits = synthetic_splits(seed)
    measured = thresholds.bigger_gallery(as_embedded(splits))
    everything = {"c4", "c5", "c6", "c7"}
    assert_same(measured, brute_force(splits, ("train", "val"), set(), everything))
    assert measured["threshold"] == thresholds.val_alone(as_embedded(splits))["threshold"]


def test_the_synthetic_faces_reach_every_outcome(thresholds):
    """Otherwise the references above would compare zeros."""
    outcomes = [thresholds.val_alone(as_embedded(synthetic_splits(seed))) for seed in range(4)]
    for key in ("named_right", "called_unknown", "named_wrong", "unseen_called_unknown"):
        assert any(0 < outcome[key] < 1 for outcome in outcomes), key
    halves = [
        {
            brute_force(synthetic_splits(seed), ("train",), calibrating, set())["threshold"]
            for calibrating in ({"c4", "c5"}, {"c6", "c7"})
        }
        for seed in range(4)
    ]
    assert any(len(pair) == 2 for pair in halves)  # the two ways are two calibrations


def test_script_prints_each_way_over_the_projects(tmp_path):
    projects = [tmp_path / "split-0" / "seed-0" / "project", tmp_path / "seed-1" / "project"]
    for seed, root in enumerate(projects):
        write_splits(root, synthetic_splits(seed, held_out=3), np.random.default_rng(seed))
    result = run_script(SCRIPT, *projects, "--json", tmp_path / "t.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "t.json").read_text())
    assert len(report["ways"]) == 3
    for per_project in report["ways"].values():
        assert len(per_project) == 2
        for figures in per_project:
            known = figures["named_right"] + figures["called_unknown"] + figures["named_wrong"]
            assert known == pytest.approx(1.0)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("2 projects") and lines[2].startswith("val alone (the default)")
    assert len(lines) == 5


def test_a_project_with_one_held_out_character_is_refused(tmp_path):
    root = tmp_path / "project"
    write_splits(root, synthetic_splits(0, held_out=1), np.random.default_rng(0))
    result = run_script(SCRIPT, root)
    assert result.returncode != 0
    assert "1 held-out character(s)" in result.stderr and "Traceback" not in result.stderr
