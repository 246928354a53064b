"""benchmarks/identify_speed.py on a few pictures: start-up of the real command, and
pictures per second one at a time against in batches, with the same answers from both."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_identify_speed_benchmark_times_start_up_and_both_ways_of_naming():
    process = subprocess.run(
        [
            sys.executable,
            "benchmarks/identify_speed.py",
            "--pictures",
            "2",
            "--starts",
            "1",
            "--repeats",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    assert re.search(
        r"start-up: identify one picture \d+\.\d\d s \(the CLI alone: \d+\.\d\d s\)",
        process.stdout,
    )
    assert re.search(
        r"throughput \(2 pictures, \d+ faces\): one at a time \d+\.\d pictures/s, in batches of "
        r"16 \d+\.\d pictures/s \(\d+\.\d\dx\); same answers: True",
        process.stdout,
    )
    assert re.search(
        r"detector network, 2 pictures of \d+ px: batches of 1 \d+\.\d pictures/s \(1\.00x\), "
        r"batches of 2 \d+\.\d pictures/s \(\d+\.\d\dx\)",
        process.stdout,
    )
