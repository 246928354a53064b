"""benchmarks/scale.py on a few pictures: the single-process loop and a Dask cluster,
with pictures per second, the ratio, and the same crops from both."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_scale_benchmark_compares_dask_workers_with_one_process():
    process = subprocess.run(
        [sys.executable, "benchmarks/scale.py", "--per-character", "3", "--workers", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    assert "9 pictures of 3 characters" in process.stdout
    assert re.search(r"single process +\d+\.\d s +\d+\.\d\d pictures/s +1\.00x", process.stdout)
    line = next(line for line in process.stdout.splitlines() if line.startswith("dask, 2"))
    assert re.search(
        r"\d+\.\d\d pictures/s +\d+\.\d\dx +\(first pass \d+\.\d s, cluster start \d+\.\d s; "
        r"same crops\)",
        line,
    )
