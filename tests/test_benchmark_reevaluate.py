"""benchmarks/reevaluate.py: a project quality.py kept, evaluated again with an
evaluation-time setting. With the setting it was trained with, the figures come back
exactly; with another, the vectors change and the kept project stays as it was."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anime_face_id.checkpoint import load_checkpoint
from tests.support.synthetic import PIPELINE_NAMES, write_picture_folder
from tests.test_benchmark_quality import SCRIPT as QUALITY
from tests.test_benchmark_quality import tiny_recipe

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "reevaluate.py"
FEATURE_DIM = 1280  # EfficientNet-Lite0's pooled features


def run(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def kept_project(tmp_path_factory) -> Path:
    """One tiny quality.py run (the shipped recipe: append_features trained), kept."""
    base = tmp_path_factory.mktemp("reevaluate")
    folder = write_picture_folder(base / "faces", PIPELINE_NAMES, count=12)
    result = run(
        QUALITY, folder, "--holdout", "1", "--per-character", "10", "--hard-case",
        "-S", "split.seed=1", "--workdir", base / "work", *tiny_recipe(batches_per_epoch=2),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (project,) = (base / "work").glob("seed-*/project")
    return project


def stored_width(project: Path) -> int:
    """The length of the vectors evaluate stored for the project's checkpoint."""
    with np.load(project / "models" / "embeddings.npz") as stored:
        widths = {array.shape[-1] for array in stored.values() if array.ndim == 2}
    (width,) = widths
    return width


def headline(report: dict) -> list:
    return [
        report["val"]["identification"]["precision_at_1"],
        report["val"]["map_at_r"],
        report["test"]["identification"]["precision_at_1"],
        report["open_set"]["precision_at_1"],
        report["open_set"]["map_at_r"],
        report["naming"]["test"]["named_right"],
    ]


@pytest.mark.slow
def test_the_setting_trained_with_gives_the_stored_figures_and_another_changes_the_vectors(
    kept_project, tmp_path
):
    stored = json.loads((kept_project / "metrics" / "eval.json").read_text())
    assert stored["checkpoint"]["output_dim"] == 16 + FEATURE_DIM  # the shipped recipe
    files = {
        name: digest(kept_project / name) for name in ("models/embedder.pt", "metrics/eval.json")
    }

    same = run(
        SCRIPT,
        kept_project,
        "-S",
        "train.append_features=trained",
        "--json",
        tmp_path / "same.json",
    )
    assert same.returncode == 0, same.stderr[-3000:]
    again = json.loads((tmp_path / "same.json").read_text())
    assert again["as_trained"] == [stored]
    assert headline(again["reevaluated"][0]) == pytest.approx(headline(stored), abs=1e-9)
    assert "identification precision@1" in same.stdout and "up / down (of 1)" in same.stdout

    alone = run(
        SCRIPT, kept_project, "-S", "train.append_features=none", "--json", tmp_path / "alone.json",
        "--keep", tmp_path / "kept",
    )  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    report = json.loads((tmp_path / "alone.json").read_text())["reevaluated"][0]
    assert report["checkpoint"]["output_dim"] == report["checkpoint"]["embedding_dim"] == 16
    assert report["checkpoint"]["best_epoch"] == stored["checkpoint"]["best_epoch"]
    # --keep: the evaluated copy, a project the other benchmarks read, with its new figures
    copy = tmp_path / "kept" / "project"
    assert json.loads((copy / "metrics" / "eval.json").read_text()) == report
    assert load_checkpoint(copy / "models" / "embedder.pt").config.append_features == "none"
    assert stored_width(copy) == 16 and stored_width(kept_project) == 16 + FEATURE_DIM
    assert not list((tmp_path / "kept").glob(".*partial"))
    # the kept project is read, never written
    assert {name: digest(kept_project / name) for name in files} == files


def files_of_a_kept_project(project: Path) -> Path:
    """The files the script looks for, unreadable: enough for refusals before any work."""
    (project / "models").mkdir(parents=True)
    (project / "metrics").mkdir()
    (project / "models" / "embedder.pt").write_bytes(b"not read")
    (project / "metrics" / "eval.json").write_text("{}")
    return project


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["-S", "train.lr=1e-4"], "train.lr changes the training"),
        (["-S", "evaluate.k=[1]"], "only train settings"),
        (["-S", "train.append_features=pixels"], "append_features"),
        ([], "give a setting to change"),
    ],
)
def test_a_setting_training_would_see_is_refused_before_any_work(tmp_path, arguments, message):
    project = files_of_a_kept_project(tmp_path / "project")
    result = run(SCRIPT, project, *arguments)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_keep_folder_holding_the_copy_already_is_refused_before_any_work(tmp_path):
    project = files_of_a_kept_project(tmp_path / "work" / "project")
    (tmp_path / "new" / "project").mkdir(parents=True)
    result = run(SCRIPT, project, "-S", "train.flip_test=false", "--keep", tmp_path / "new")
    assert result.returncode == 2
    assert "exists already" in result.stderr and "Traceback" not in result.stderr


def test_a_folder_that_is_not_a_kept_project_is_refused(tmp_path):
    result = run(SCRIPT, tmp_path, "-S", "train.flip_test=false")
    assert result.returncode == 2
    assert "quality.py --workdir" in result.stderr and "Traceback" not in result.stderr
