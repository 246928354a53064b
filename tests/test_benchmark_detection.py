"""benchmarks/detection.py as the README runs it, on a few of ../shared's pictures: both
detectors measured side by side, the min_score sweep and the speed ratio printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from anime_face_id.faces.detector_data import read_yolo_folder, split_validation

REPO = Path(__file__).resolve().parents[1]


def link_frames(items, source: Path, destination: Path) -> None:
    for folder in ("images", "labels"):
        (destination / folder).mkdir(parents=True, exist_ok=True)
    for item in items:
        (destination / "images" / item.path.name).symlink_to(item.path)
        label = source / "labels" / f"{item.path.stem}.txt"
        (destination / "labels" / label.name).symlink_to(label)


@pytest.fixture
def small_shared(tmp_path: Path, shared_dir: Path) -> Path:
    """../shared's layout with a handful of its pictures (validation frames stay validation
    frames: the split is by file name)."""
    testdata = shared_dir / "testdata"
    # the split needs only names: listing, not decoding, the 2,525 frames
    frames = [
        SimpleNamespace(path=p) for p in sorted((testdata / "detection-train/images").iterdir())
    ]
    train, validation = split_validation(frames, 0.1)
    small = tmp_path / "shared"
    link_frames(
        train[:3] + validation[:4],
        testdata / "detection-train",
        small / "testdata" / "detection-train",
    )
    link_frames(
        read_yolo_folder(testdata / "detection")[:3],
        testdata / "detection",
        small / "testdata" / "detection",
    )
    for character in sorted((testdata / "raw").iterdir())[:2]:
        (small / "testdata" / "raw" / character.name).mkdir(parents=True)
        for picture in sorted(character.glob("*.jpg"))[:3]:
            (small / "testdata" / "raw" / character.name / picture.name).symlink_to(picture)
    (small / "detector").mkdir()
    (small / "detector" / "lbpcascade_animeface.xml").symlink_to(
        shared_dir / "detector" / "lbpcascade_animeface.xml"
    )
    return small


def small_validation_faces(small_shared: Path) -> int:
    frames = read_yolo_folder(small_shared / "testdata" / "detection-train")
    return sum(len(item.boxes) for item in split_validation(frames, 0.1)[1])


def run_benchmark(shared: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "benchmarks/detection.py", "--shared", str(shared), *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_the_benchmark_runs_on_other_data_than_the_shared_sizes(small_shared: Path) -> None:
    """Frames not of 640 px (speed is then measured on frames scaled to it) and
    illustrations that are PNG: the benchmark must not stop at its last step."""
    frames = small_shared / "testdata" / "detection-train" / "images"
    for link in list(frames.iterdir()):
        picture = Image.open(link.resolve()).convert("RGB")
        link.unlink()
        picture.resize((picture.width // 2, picture.height // 2)).save(link)
    for link in list((small_shared / "testdata" / "raw").glob("*/*.jpg")):
        Image.open(link.resolve()).save(link.with_suffix(".png"))
        link.unlink()
    process = run_benchmark(small_shared, "--seconds", "0.2")
    assert process.returncode == 0, process.stdout + process.stderr
    assert "6 illustrations" in process.stdout and "speed on 4 frames of 640 px" in process.stdout
    assert re.search(r"speed of centernet against the cascade: \d+\.\d\dx", process.stdout)


def test_detection_benchmark_compares_both_detectors(small_shared: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.jpg"
    process = subprocess.run(
        [
            sys.executable,
            "benchmarks/detection.py",
            "--shared",
            str(small_shared),
            "--seconds",
            "0.5",
            "--sheet",
            str(sheet),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    out = process.stdout
    assert "4 validation frames, 3 small-set frames, 6 illustrations" in out
    assert re.search(r"illustrations, \d+ close-ups", out)
    for name in ("cascade (lbp)", "centernet"):
        line = next(line for line in out.splitlines() if line.startswith(name))
        recall, precision = map(float, re.search(r"recall (\S+) precision (\S+)", line).groups())
        assert 0 <= recall <= 1 and 0 <= precision <= 1
        assert re.search(r"illustrations with a face \d/6", line)
        assert re.search(r"close-ups recall \d\.\d{3} \(IoU 0\.5\), with a face \d\.\d{3}", line)
    widths = re.findall(r"frames recall by labelled face width: (.*)", out)
    assert len(widths) == 2  # one line per detector
    for line in widths:
        bands = re.findall(r"(\S+) px (\d\.\d\d) \((\d+)\)", line)
        assert [band for band, _, _ in bands] == [
            "0-30",
            "30-45",
            "45-60",
            "60-90",
            "90-150",
            "150+",
        ]
        # every labelled face of the 4 validation frames is in exactly one band
        assert sum(int(count) for _, _, count in bands) == small_validation_faces(small_shared)
    sweeps = re.split(r"centernet on (\d+) (validation|training \(fit\)) frames by min_score", out)
    assert [(sweeps[1], sweeps[2]), (sweeps[4], sweeps[5])] == [
        ("4", "validation"),
        ("3", "training (fit)"),  # the small set's 3 training frames, fewer than asked for
    ]
    for sweep in (sweeps[3], sweeps[6]):
        rows = re.findall(r"min_score (0\.\d\d): recall (\S+) precision (\S+) F1 (\S+)", sweep)
        assert [row[0] for row in rows] == ["0.10", "0.20", "0.30", "0.35", "0.40", "0.50", "0.60"]
        for _, recall, precision, f1 in rows:
            r, p = float(recall), float(precision)
            assert float(f1) == pytest.approx(2 * r * p / (r + p) if r + p else 0, abs=2e-3)
        best_f1, best_at = re.search(r"best F1 (\S+) at min_score (\S+)", sweep).groups()
        assert best_f1 == max(row[3] for row in rows)
        assert best_at in [row[0] for row in rows if row[3] == best_f1]
    assert re.search(r"speed of centernet against the cascade: \d+\.\d\dx", out)
    assert sheet.stat().st_size > 0
