"""benchmarks/naming.py on small galleries: per-face time of both naming paths, with the
speed-up against the baseline measured in the same run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = ("--items", "300", "3000", "--faces", "4", "--characters", "40")
LINE = re.compile(
    r"^ *(\d+) gallery items: every item ranked +(\d+\.\d\d) ms/face, "
    r"vectorised +(\d+\.\d\d) ms/face \((\d+\.\d)x faster\)$"
)


def test_naming_benchmark_prints_ms_per_face_for_both_paths_and_the_ratio():
    process = subprocess.run(
        [sys.executable, "benchmarks/naming.py", *SMALL],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    rows = [LINE.match(line) for line in process.stdout.splitlines()]
    assert all(rows) and [int(row[1]) for row in rows] == [300, 3000], process.stdout
    for row in rows:
        baseline, vectorised, ratio = float(row[2]), float(row[3]), float(row[4])
        # the ratio is of the unrounded times: the printed ones agree to their rounding
        assert vectorised > 0 and abs(baseline / vectorised - ratio) <= 0.1 + 0.15 * ratio
