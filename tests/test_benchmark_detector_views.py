"""benchmarks/detector_views.py as the README runs it, on a few of ../shared's frames and
crops: views per second drawn in turn and by worker processes, and the ratio between them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from anime_face_id.faces.detector_data import read_yolo_folder
from tests.test_benchmark_detection import link_frames

REPO = Path(__file__).resolve().parents[1]


def test_views_are_counted_in_turn_and_by_workers_with_the_ratio(
    tmp_path: Path, shared_dir: Path
) -> None:
    source = shared_dir / "testdata" / "detection-train"
    frames = tmp_path / "frames"
    link_frames(read_yolo_folder(source)[:6], source, frames)
    crops = tmp_path / "crops" / "someone"
    crops.mkdir(parents=True)
    for picture in sorted((shared_dir / "testdata" / "identities").glob("*/*"))[:3]:
        (crops / picture.name).symlink_to(picture)
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/detector_views.py",
            "--frames",
            str(frames),
            "--crops",
            str(tmp_path / "crops"),
            "--workers",
            "1",
            "2",
            "--batches",
            "3",
            "--batch-size",
            "2",
            "--rounds",
            "2",
            "--view-size",
            "96",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "6 frames, 3 crops, 6 views of 96 px a round, 2 rounds" in result.stdout
    rows = {
        match[1].strip(): (float(match[2]), float(match[3]))
        for match in re.finditer(r"^(.+?)\s+([\d.]+)\s+\d+-\d+\s+([\d.]+)$", result.stdout, re.M)
    }
    assert set(rows) == {"in turn (--workers 0)", "--workers 1", "--workers 2"}
    assert rows["in turn (--workers 0)"][1] == 1.0
    for rate, ratio in rows.values():
        assert rate > 0 and abs(ratio - rate / rows["in turn (--workers 0)"][0]) < 0.02


def test_a_folder_without_images_is_refused_with_its_name(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/detector_views.py", "--frames", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1 and f"{tmp_path} has no images/ folder" in result.stderr
