"""benchmarks/quality.py runs the recipe from params.yaml, with -S overrides and several
seeds, and reports numbers next to the ImageNet baseline (a smoke test of the machinery on
generated characters; the measurement itself is the benchmark's job)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.synthetic import PIPELINE_NAMES, write_picture_folder

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "quality.py"


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_benchmark_trains_each_seed_and_compares_with_imagenet(tmp_path):
    folder = write_picture_folder(tmp_path / "faces", PIPELINE_NAMES, count=12)
    result = run_benchmark(
        str(folder),
        "--holdout", "1",
        "--seeds", "0", "1",
        "--json", str(tmp_path / "quality.json"),
        "-S", "train.image_size=64",
        "-S", "train.embedding_dim=16",
        "-S", "train.p=4",
        "-S", "train.epochs=1",
        "-S", "train.batches_per_epoch=2",
        "-S", "train.device=cpu",
        "-S", "evaluate.device=cpu",
        "-S", "balance.min_per_class=8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "quality.json").read_text())

    assert report["seeds"] == [0, 1]
    # the recipe is params.yaml's, changed only where -S said so
    assert report["changes"]["train.image_size"] == 64
    assert report["recipe"]["train"]["loss"] == "batch_hard"
    assert "train.loss" not in report["changes"]
    assert [r["train_config"]["seed"] for r in report["reports"]] == [0, 1]

    rows = {row["metric"]: row for row in report["rows"]}
    p_at_1 = rows["val precision@1"]
    assert len(p_at_1["per_seed"]) == 2
    assert p_at_1["model"] == pytest.approx(sum(p_at_1["per_seed"]) / 2)
    assert p_at_1["worst"] == min(p_at_1["per_seed"])
    assert 0.0 <= p_at_1["baseline"] <= 1.0
    assert p_at_1["target"] == 0.95 and p_at_1["passed"] == (p_at_1["model"] >= 0.95)
    assert rows["open-set precision@1"]["target"] == 0.85
    assert "val precision@1" in result.stdout and "ImageNet" in result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.no_such_param=1", "no_such_param"),
        ("lr=1e-4", "SECTION.KEY=VALUE"),
        ("crop.size=64", "recipe has sections"),
        ("train.lr=-1", "train.lr"),
    ],
)
def test_bad_override_is_refused_before_any_work(tmp_path, override, message):
    folder = write_picture_folder(tmp_path / "faces", PIPELINE_NAMES[:2], count=3)
    result = run_benchmark(str(folder), "--workdir", str(tmp_path / "work"), "-S", override)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "work").exists()
