"""benchmarks/rescoring.py and input_views.py: scoring rules on stored embeddings, each against a brute-force
reference or against nearest where the rule reduces to it, and the script end to end on
a project written here (splits, crops, checkpoint file, stored embeddings); test-time views
of a checkpoint, whose plain view is the stages' own embedding."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anime_face_id.checkpoint import load_checkpoint
from anime_face_id.dataset import read_split
from anime_face_id.embed import embed_paths
from anime_face_id.embedding_store import EMBEDDINGS, embedder_fingerprint, save_embeddings
from anime_face_id.layout import EMBEDDER, SPLIT_COLUMNS, split_csv
from anime_face_id.metrics import retrieval_metrics
from anime_face_id.transforms import FILL_VALUE
from tests.support.scripts import script_module
from tests.test_identify import save_untrained_checkpoint
from tests.test_train import make_synthetic_project

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "rescoring.py"
VIEWS_SCRIPT = REPO / "benchmarks" / "input_views.py"


@pytest.fixture(scope="module")
def rescoring():
    with script_module(SCRIPT, "rescoring_benchmark") as module:
        yield module


def clustered(rng, characters: int, per_character: int, spread: float):
    """Unit embeddings around one random centre per character (overlapping when spread is large)."""
    centres = rng.normal(size=(characters, 16))
    labels = np.repeat([f"c{i}" for i in range(characters)], per_character)
    x = np.repeat(centres, per_character, axis=0) + rng.normal(0, spread, (len(labels), 16))
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def run_script(script: Path, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, str(script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def predictions(rule, queries, gallery, labels) -> np.ndarray:
    scores, names = rule(queries, gallery, labels)
    return np.array(names)[scores.argmax(1)]


@pytest.mark.parametrize("seed", range(5))
def test_nearest_names_what_identification_precision_counts(rescoring, seed):
    rng = np.random.default_rng(seed)
    gallery, labels = clustered(rng, 6, 5, spread=1.2)
    queries, truth = clustered(rng, 6, 3, spread=1.2)
    right = (predictions(rescoring.nearest, queries, gallery, labels) == truth).mean()
    reference = retrieval_metrics(queries, truth, gallery, labels, ks=(1,))["precision_at_1"]
    assert right == pytest.approx(reference)


@pytest.mark.parametrize("seed", range(5))
def test_rules_that_reduce_to_nearest_name_the_same_faces(rescoring, seed):
    rng = np.random.default_rng(seed)
    gallery, labels = clustered(rng, 5, 6, spread=1.5)
    queries, _ = clustered(rng, 5, 4, spread=1.5)
    expected = predictions(rescoring.nearest, queries, gallery, labels)
    for rule in (
        rescoring.top_k_mean(1),
        rescoring.soft_max(1e-4),
        rescoring.knn_vote(1, 1),
        rescoring.query_expansion(0, 1),
        rescoring.gallery_dba(1),
        rescoring.k_reciprocal(5, 1, 1.0),  # lambda 1: the original distance alone
    ):
        assert (predictions(rule, queries, gallery, labels) == expected).all()


def test_top_k_mean_and_votes_match_brute_force(rescoring):
    rng = np.random.default_rng(7)
    gallery, labels = clustered(rng, 4, 5, spread=1.5)
    queries, _ = clustered(rng, 4, 3, spread=1.5)
    mean_scores, names = rescoring.top_k_mean(3)(queries, gallery, labels)
    vote_scores, _ = rescoring.knn_vote(4, 2)(queries, gallery, labels)
    for q, query in enumerate(queries):
        similarities = [float(query @ g) for g in gallery]
        for c, name in enumerate(names):
            mine = sorted(
                (s for s, label in zip(similarities, labels, strict=True) if label == name),
                reverse=True,
            )
            assert mean_scores[q, c] == pytest.approx(sum(mine[:3]) / 3)
        order = sorted(range(len(gallery)), key=lambda j: -similarities[j])[:4]
        for c, name in enumerate(names):
            votes = sum(max(similarities[j], 0) ** 2 for j in order if labels[j] == name)
            assert vote_scores[q, c] == pytest.approx(votes, abs=1e-5)


def test_gallery_dba_pulls_an_outlier_towards_its_character(rescoring):
    """A gallery face far from its character's others, averaged with its nearest
    same-character face, no longer captures a query of another character."""

    def at(*degrees):
        return np.array([[np.cos(np.radians(d)), np.sin(np.radians(d))] for d in degrees])

    gallery = at(0, 50, 60, 90)  # a's outlier at 50 degrees, next to b's face at 60
    labels = np.array(["a", "a", "b", "b"])
    query = at(52)  # DBA: a's faces become 25 degrees, b's 75
    assert predictions(rescoring.nearest, query, gallery, labels)[0] == "a"
    assert predictions(rescoring.gallery_dba(2), query, gallery, labels)[0] == "b"


def write_project(root: Path, rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Splits of crops with stored embeddings for a checkpoint file, as evaluate leaves them."""
    splits = {
        name: clustered(rng, 4, per_character, spread=1.0)
        for name, per_character in (("train", 5), ("val", 2), ("test", 2))
    }
    write_splits(root, splits, rng)
    return splits


def write_splits(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], rng) -> None:
    """{split: (embeddings, labels)} as crops, split CSVs and the embeddings evaluate stores
    for a checkpoint file."""
    vectors = {}
    for name, (embeddings, labels) in splits.items():
        rows = []
        for i, (vector, label) in enumerate(zip(embeddings, labels, strict=True)):
            path = f"data/faces/{label}/{name}-{i}.png"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), tuple(int(v) for v in rng.integers(0, 255, 3))).save(
                root / path
            )
            vectors[path] = vector
            rows.append(
                {"character": label, "slug": label, "path": path, "source": "", "cluster": i}
            )
        (root / split_csv(name)).parent.mkdir(parents=True, exist_ok=True)
        with open(root / split_csv(name), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SPLIT_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    (root / EMBEDDER).parent.mkdir(parents=True, exist_ok=True)
    (root / EMBEDDER).write_bytes(b"a checkpoint")
    save_embeddings(root / EMBEDDINGS, embedder_fingerprint(root / EMBEDDER), root, vectors)


def test_script_counts_each_rule_on_stored_embeddings(tmp_path, rescoring):
    rng = np.random.default_rng(3)
    projects = [tmp_path / "seed-0", tmp_path / "seed-1"]
    truth = [write_project(root, rng) for root in projects]
    result = run_script(SCRIPT, *projects, "--json", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["queries"] == {"val": [8, 8], "test": [8, 8]}
    assert set(report["right"]) == set(rescoring.RULES)
    for i, splits in enumerate(truth):
        for name in ("val", "test"):
            queries, labels = splits[name]
            named = predictions(rescoring.nearest, queries, *splits["train"])
            expected = int((named == labels).sum())
            assert report["right"]["nearest (identify today)"][name][i] == expected
    nearest_line = next(line for line in result.stdout.splitlines() if line.startswith("nearest"))
    assert nearest_line.endswith("+0 faces")


def test_a_crop_without_a_stored_embedding_is_named(tmp_path):
    root = tmp_path / "project"
    write_project(root, np.random.default_rng(0))
    (root / EMBEDDER).write_bytes(b"retrained since")  # the stored vectors are for another network
    result = run_script(SCRIPT, root)
    assert result.returncode != 0
    assert "no stored embedding for this checkpoint" in result.stderr
    assert "run evaluate" in result.stderr


# benchmarks/input_views.py: the same network under test-time views


@pytest.fixture(scope="module")
def views():
    with script_module(VIEWS_SCRIPT, "views_benchmark") as module:
        yield module


def test_zoom_in_keeps_the_centre_and_zoom_out_pads_with_the_fill_grey(views):
    picture = np.arange(40 * 30 * 3, dtype=np.uint8).reshape(40, 30, 3)
    assert views.zoomed(picture, 1.0) is picture
    inner = views.zoomed(picture, 2.0)
    assert inner.shape == (20, 15, 3)
    assert (inner == picture[10:30, 7:22]).all()
    outer = views.zoomed(picture, 0.5)
    assert outer.shape == (80, 60, 3)
    assert (outer[20:60, 15:45] == picture).all()
    assert (outer[:20] == FILL_VALUE).all() and (outer[:, :15] == FILL_VALUE).all()


@pytest.mark.slow
def test_the_plain_view_names_what_the_pipeline_embedding_names(tmp_path, rescoring):
    """The script's baseline row is the stages' own embedding (embed_paths at the checkpoint's
    size), named by nearest; every view and average is counted for the same queries."""
    root = tmp_path / "project"
    make_synthetic_project(root, counts=(4, 2, 2))
    save_untrained_checkpoint(
        root / EMBEDDER, ["Akane Red", "Ao Blue", "Kiiro Yellow", "Midori Green"]
    )
    result = run_script(VIEWS_SCRIPT, root, "--json", tmp_path / "v.json", timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["queries"] == {"val": [8], "test": [8]}
    assert len(report["right"]) == 10
    plain = report["right"]["plain 64 px (today)"]

    model = load_checkpoint(root / EMBEDDER).model
    splits = {name: read_split(root, name) for name in ("train", "val", "test")}
    embedded = {
        name: embed_paths(model, [root / row["path"] for row in rows], 64).numpy()
        for name, rows in splits.items()
    }
    labels = {name: np.array([row["character"] for row in rows]) for name, rows in splits.items()}
    for name in ("val", "test"):
        named = predictions(rescoring.nearest, rescoring.unit_rows(embedded[name]),
                            rescoring.unit_rows(embedded["train"]), labels["train"])  # fmt: skip
        assert plain[name] == [int((named == labels[name]).sum())]
    assert "plain 64 px (today)" in result.stdout.splitlines()[1]
