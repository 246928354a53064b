"""The evaluate stage on a briefly trained model of generated characters: the report's
keys and types, identification against the training gallery, open set, plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anime_face_id import layout
from anime_face_id.checkpoint import load_checkpoint
from anime_face_id.config import EvaluateConfig
from anime_face_id.dataset import read_split
from anime_face_id.embed import embed_paths
from anime_face_id.errors import StageError
from anime_face_id.evaluate import EVAL_METRICS, evaluate
from anime_face_id.evaluation_plots import (
    CONFUSED_PAIRS_CSV,
    EMBEDDING_MAP_CSV,
    EMBEDDING_MAP_PNG,
    LOSS_CURVES_PNG,
    PER_CHARACTER_CSV,
    PER_CHARACTER_PNG,
    RETRIEVAL_GRID_PNG,
)
from anime_face_id.fileio import read_csv, write_csv
from anime_face_id.layout import EMBEDDER
from anime_face_id.metrics import retrieval_metrics
from anime_face_id.train import train
from anime_face_id.training_report import TRAIN_HISTORY
from tests.test_train import make_synthetic_project, tiny_config

pytestmark = pytest.mark.slow

TRAINED = ("Akane Red", "Ao Blue", "Midori Green", "Kiiro Yellow")
HELD_OUT = ("Murasaki Purple", "Shiro White")
RETRIEVAL_KEYS = ("precision_at_1", "r_precision", "map_at_r", "precision_at_5")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """Four trained characters and two held out, one short training run."""
    root = tmp_path_factory.mktemp("evaluate") / "project"
    make_synthetic_project(root, names=TRAINED + HELD_OUT, counts=(8, 4, 3), holdout=HELD_OUT)
    train(root, tiny_config(epochs=1, batches_per_epoch=3))
    return root


@pytest.fixture(scope="module")
def report(project) -> dict:
    return evaluate(project, EvaluateConfig(device="cpu", k=[1, 5, 10]), run_id="abc123")


def is_score(value) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


def test_report_has_every_metric_for_val_and_test(report, project):
    assert json.loads((project / EVAL_METRICS).read_text()) == report
    assert report["run_id"] == "abc123"
    assert report["checkpoint"]["best_epoch"] == 1 and report["checkpoint"]["characters"] == 4
    for split, images in (("val", 16), ("test", 12)):
        part = report[split]
        assert all(is_score(part[key]) for key in RETRIEVAL_KEYS), part
        assert set(part["top_k_accuracy"]) == {"1", "5", "10"}
        assert all(is_score(v) for v in part["top_k_accuracy"].values())
        assert part["top_k_accuracy"]["1"] == part["precision_at_1"]
        assert part["top_k_accuracy"]["1"] <= part["top_k_accuracy"]["5"]
        assert is_score(part["eer"]) and -1.0 <= part["eer_threshold"] <= 1.0
        assert part["num_images"] == images and part["num_characters"] == 4
        identification = part["identification"]
        assert is_score(identification["precision_at_1"])
        assert set(identification["top_k_accuracy"]) == {"1", "5", "10"}
        assert identification["gallery_images"] == 32
    from anime_face_id.evaluate import below_baseline

    assert report["skipped_images"] == []
    assert report["warnings"] == [w for w in [below_baseline(report)] if w]


def test_a_val_split_with_one_face_per_character_is_a_warning_not_a_silent_none():
    from anime_face_id.evaluate import unranked_val

    unranked = {"val": {"num_queries": 0, "num_images": 3, "map_at_r": None}}
    assert "val has no character with two faces (3 val images)" in unranked_val(unranked)
    assert unranked_val({"val": {"num_queries": 5, "num_images": 8}}) is None


def test_identification_queries_the_training_gallery(report, project):
    loaded = load_checkpoint(project / EMBEDDER)

    def embedded(split):
        rows = read_split(project, split)
        paths = [project / row["path"] for row in rows]
        labels = np.array([row["character"] for row in rows])
        return embed_paths(loaded.model, paths, loaded.image_size, "cpu"), labels

    val, val_labels = embedded("val")
    gallery, gallery_labels = embedded("train")
    expected = retrieval_metrics(val, val_labels, gallery, gallery_labels, ks=(1, 5, 10))
    identification = report["val"]["identification"]
    assert identification["precision_at_1"] == pytest.approx(expected["precision_at_1"])
    assert identification["top_k_accuracy"]["5"] == pytest.approx(expected["top_k_accuracy"][5])
    within = retrieval_metrics(val, val_labels, ks=(1,))
    assert report["val"]["map_at_r"] == pytest.approx(within["map_at_r"])


def test_naming_is_what_identify_answers_with_a_threshold_calibrated_on_val(report, project):
    from anime_face_id.evaluation_data import EmbeddedSplit
    from anime_face_id.naming_outcomes import naming_report

    loaded = load_checkpoint(project / EMBEDDER)

    def embedded(split):
        rows = read_split(project, split)
        paths = [project / row["path"] for row in rows]
        vectors = embed_paths(loaded.model, paths, loaded.image_size, "cpu").numpy()
        return EmbeddedSplit(
            [row["path"] for row in rows],
            np.array([row["character"] for row in rows], dtype=object),
            vectors,
        )

    splits = [embedded(name) for name in ("train", "val", "test", "holdout")]
    expected = naming_report(*splits, embedder=loaded.sha256)
    naming = report["naming"]
    assert naming["calibration"]["method"] == "val_eer"
    assert naming["calibration"]["threshold"] == pytest.approx(
        expected["calibration"]["threshold"], abs=1e-5
    )
    assert naming["test"] == pytest.approx(expected["test"])
    assert naming["open_set"] == pytest.approx(expected["open_set"])
    assert naming["test"]["faces"] == 12 and naming["open_set"]["faces"] == 30
    outcomes = naming["test"]
    assert outcomes["named_right"] + outcomes["called_unknown"] + outcomes["named_wrong"] == (
        pytest.approx(1.0)
    )


def test_with_misfiled_left_out_identification_searches_the_gallery_package_builds(
    tmp_path, project, report
):
    """A training face renamed to another character: with leave_out_misfiled the
    identification gallery is the package's (misfiled faces out), and the report says how
    many; without it, the full training split (the module's report)."""
    import shutil

    from anime_face_id.evaluation_data import EmbeddedSplit, gallery_without_misfiled

    root = tmp_path / "copy"
    shutil.copytree(project, root)
    rows = read_csv(root / layout.split_csv("train"))
    next(row for row in rows if row["character"] == TRAINED[0])["character"] = TRAINED[1]
    write_csv(root / layout.split_csv("train"), layout.SPLIT_COLUMNS, rows)
    result = evaluate(root, EvaluateConfig(device="cpu"), leave_out_misfiled=True)

    loaded = load_checkpoint(root / EMBEDDER)
    train_rows = read_split(root, "train")
    full = EmbeddedSplit(
        paths=[row["path"] for row in train_rows],
        labels=np.array([row["character"] for row in train_rows]),
        embeddings=embed_paths(
            loaded.model, [root / row["path"] for row in train_rows], loaded.image_size, "cpu"
        ).numpy(),
    )
    kept = gallery_without_misfiled(full)
    assert 0 < len(full) - len(kept) == result["gallery_left_out_misfiled"]
    for split in ("val", "test"):
        assert result[split]["identification"]["gallery_images"] == len(kept)
    assert result["baseline_val"]["identification"]["gallery_images"] < len(full)
    assert report["gallery_left_out_misfiled"] == 0
    assert report["val"]["identification"]["gallery_images"] == 32


def test_open_set_scores_only_the_held_out_characters(report):
    open_set = report["open_set"]
    assert open_set["num_characters"] == 2 and open_set["num_images"] == 30
    assert all(is_score(open_set[key]) for key in RETRIEVAL_KEYS)
    assert "identification" not in open_set  # unseen characters have no gallery
    assert is_score(open_set["eer"])


def test_baseline_uses_imagenet_features_on_the_same_images(report):
    for name in ("baseline_val", "baseline_open_set"):
        baseline = report[name]
        assert baseline["features"].startswith("imagenet")
        assert all(is_score(baseline[key]) for key in RETRIEVAL_KEYS)
    assert report["baseline_val"]["num_images"] == report["val"]["num_images"]
    assert report["baseline_val"]["map_at_r"] != report["val"]["map_at_r"]


def test_baseline_identifies_val_against_the_same_training_gallery(report):
    """benchmarks/quality.py's headline (identification precision@1) needs its baseline."""
    baseline, trained = report["baseline_val"]["identification"], report["val"]["identification"]
    assert is_score(baseline["precision_at_1"])
    assert set(baseline["top_k_accuracy"]) == {"1", "5", "10"}
    assert baseline["top_k_accuracy"]["1"] == baseline["precision_at_1"]
    assert baseline["num_queries"] == trained["num_queries"]
    assert baseline["gallery_images"] == trained["gallery_images"] == 32
    assert "identification" not in report["baseline_open_set"]  # no gallery for unseen ones


def test_plots_are_valid_images_and_tables(report, project):
    for png in (
        EMBEDDING_MAP_PNG,
        RETRIEVAL_GRID_PNG,
        PER_CHARACTER_PNG,
        LOSS_CURVES_PNG,
    ):
        assert png.as_posix() in report["plots"]
        with Image.open(project / png) as image:
            assert image.format == "PNG"
            image.verify()
        with Image.open(project / png) as image:
            assert min(image.size) > 200
    with (project / PER_CHARACTER_CSV).open(newline="") as handle:
        per_character = list(csv.DictReader(handle))
    assert sorted(row["character"] for row in per_character) == sorted(TRAINED)
    assert {"queries", "precision_at_1", "map_at_r"} <= set(per_character[0])
    map_at_r = [float(row["map_at_r"]) for row in per_character]
    assert map_at_r == sorted(map_at_r)  # worst first
    with (project / EMBEDDING_MAP_CSV).open(newline="") as handle:
        points = list(csv.DictReader(handle))
    assert len(points) == 16 and all(math.isfinite(float(p["x"])) for p in points)
    with (project / CONFUSED_PAIRS_CSV).open(newline="") as handle:
        pairs = list(csv.DictReader(handle))
    assert pairs == [{k: str(v) for k, v in pair.items()} for pair in report["confused_pairs"]]
    assert not list((project / "plots").glob(".tmp-*"))


def test_without_holdout_or_baseline_those_sections_are_absent(tmp_path, project):
    root = tmp_path / "copy"
    (root / "models").mkdir(parents=True)
    (root / EMBEDDER).write_bytes((project / EMBEDDER).read_bytes())
    make_synthetic_project(root, names=TRAINED, counts=(3, 2, 2))
    result = evaluate(root, EvaluateConfig(device="cpu", baseline=False, grid_queries=0))
    assert "open_set" not in result and "baseline_val" not in result
    assert "run_id" not in result
    assert RETRIEVAL_GRID_PNG.as_posix() not in result["plots"]
    assert LOSS_CURVES_PNG.as_posix() not in result["plots"]  # no history here
    assert EMBEDDING_MAP_PNG.as_posix() in result["plots"]  # 8 points: the PCA fallback


def test_an_empty_holdout_file_means_no_open_set(tmp_path, project):
    root = tmp_path / "copy"
    (root / "models").mkdir(parents=True)
    (root / EMBEDDER).write_bytes((project / EMBEDDER).read_bytes())
    make_synthetic_project(root, names=TRAINED, counts=(3, 2, 0))
    write_csv(root / layout.split_csv("holdout"), layout.SPLIT_COLUMNS, [])
    (root / TRAIN_HISTORY).parent.mkdir(parents=True)
    (root / TRAIN_HISTORY).write_text("epoch,loss\n1,0.5\n")
    result = evaluate(root, EvaluateConfig(device="cpu", baseline=False))
    assert "open_set" not in result
    assert result["test"]["num_images"] == 0
    assert result["test"]["precision_at_1"] is None  # nothing to score: null, not NaN
    assert LOSS_CURVES_PNG.as_posix() in result["plots"]


def test_every_split_is_stored_for_package_to_reuse(report, project):
    """models/embeddings.npz: each split's crops with the vectors evaluate scored, valid for
    this checkpoint (package builds its gallery from them)."""
    from anime_face_id.embedding_store import EMBEDDINGS, embedder_fingerprint, stored_embeddings

    paths = [
        row["path"]
        for split in ("train", "val", "test", "holdout")
        for row in read_split(project, split)
    ]
    stored = stored_embeddings(
        project / EMBEDDINGS, embedder_fingerprint(project / EMBEDDER), project, paths
    )
    assert sorted(stored) == sorted(paths) and len(set(paths)) == len(paths) > 60
    loaded = load_checkpoint(project / EMBEDDER, "cpu")
    some = paths[::9]
    fresh = embed_paths(loaded.model, [project / p for p in some], loaded.image_size).numpy()
    np.testing.assert_allclose(np.stack([stored[p] for p in some]), fresh, atol=1e-5)


def test_a_large_val_split_is_mapped_through_a_seeded_sample(monkeypatch):
    import anime_face_id.evaluation_plots as evaluation_plots

    assert evaluation_plots.map_sample(5, 0).tolist() == [0, 1, 2, 3, 4]
    monkeypatch.setattr(evaluation_plots, "MAP_POINTS", 4)
    sample = evaluation_plots.map_sample(10, 0)
    assert len(sample) == 4 == len(set(sample.tolist())) and list(sample) == sorted(sample)
    assert sample.tolist() == evaluation_plots.map_sample(10, 0).tolist()
    assert sample.min() >= 0 and sample.max() < 10


def test_missing_checkpoint_is_a_stage_error(tmp_path):
    make_synthetic_project(tmp_path, names=TRAINED, counts=(2, 1, 0))
    with pytest.raises(StageError, match="run the train stage"):
        evaluate(tmp_path, EvaluateConfig(device="cpu"))


def test_a_model_below_the_untrained_baseline_is_flagged(report):
    from anime_face_id.evaluate import below_baseline

    def identified(part: dict) -> float:
        return part["identification"]["precision_at_1"]

    flagged = below_baseline(report) is not None
    assert flagged == (
        report["val"]["map_at_r"] < report["baseline_val"]["map_at_r"]
        or identified(report["val"]) < identified(report["baseline_val"])
    )
    assert (below_baseline(report) in report["warnings"]) if flagged else True

    def scored(map_at_r: float, p1: float) -> dict:
        return {"map_at_r": map_at_r, "identification": {"precision_at_1": p1}}

    worse = {"val": scored(0.1, 0.9), "baseline_val": scored(0.4, 0.5)}
    assert "below the untrained ImageNet baseline: val MAP@R 0.100 < 0.400." in below_baseline(
        worse
    )
    # the headline alone below the baseline is enough, and both are named when both are
    names_fewer = {"val": scored(0.5, 0.4), "baseline_val": scored(0.4, 0.6)}
    assert "val identification P@1 0.400 < 0.600." in below_baseline(names_fewer)
    both = {"val": scored(0.1, 0.4), "baseline_val": scored(0.4, 0.6)}
    assert "val identification P@1 0.400 < 0.600, val MAP@R 0.100 < 0.400" in below_baseline(both)
    assert below_baseline({"val": scored(0.5, 0.9), "baseline_val": scored(0.4, 0.6)}) is None
    assert below_baseline({"val": {"map_at_r": 0.1}}) is None  # no baseline, no verdict
    unmeasured = {"val": {"map_at_r": float("nan")}, "baseline_val": {"map_at_r": float("nan")}}
    assert below_baseline(unmeasured) is None  # too few val faces to rank: no verdict
    assert below_baseline({**unmeasured, "baseline_val": {"map_at_r": 0.4}}) is None


def test_headline_is_a_handful_of_numbers_from_the_report(tmp_path: Path) -> None:
    from anime_face_id.evaluate import headline

    faces = [{"source": s} for s in ("data/raw/a/1.jpg", "data/raw/a/1.jpg", "data/raw/b/2.png")]
    write_csv(
        tmp_path / layout.FACES_MANIFEST,
        layout.FACE_COLUMNS,
        [{column: row.get(column, "") for column in layout.FACE_COLUMNS} for row in faces],
    )
    rejects = [
        {"source": "data/raw/a/3.jpg", "reason": layout.NO_FACE},
        {"source": "data/raw/b/4.jpg", "reason": "not an image: truncated"},  # never read
    ]
    write_csv(
        tmp_path / layout.FACES_REJECTS,
        layout.FACE_REJECT_COLUMNS,
        [{column: row.get(column, "") for column in layout.FACE_REJECT_COLUMNS} for row in rejects],
    )
    report = {
        "val": {"map_at_r": 0.812345, "eer": 0.05, "identification": {"precision_at_1": 0.9}},
        "open_set": {"precision_at_1": 0.88, "map_at_r": 0.61},
    }
    assert headline(report, tmp_path) == {
        "identification_p1": 0.9,
        "map_at_r": 0.8123,
        "open_p1": 0.88,
        "open_map_at_r": 0.61,
        "eer": 0.05,
        "untrained_p1": None,  # no baseline in this report
        "face_found": round(2 / 3, 4),  # two sources with a face, one without
    }
