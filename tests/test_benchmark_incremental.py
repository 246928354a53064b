"""benchmarks/incremental.py as the README runs it, on a tiny project: both modes measured
(a temporary Prefect server per stage, and the project's long-lived one, started and stopped
by the script), with the ratio of adding a character to a full build; and the whole
pipeline, where the fourth character is added without retraining (the script checks that
the rebuilt gallery names 4 characters) and with it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # two Prefect servers' worth of stage runs, and two trainings
def test_incremental_benchmark_measures_both_modes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    process = subprocess.run(
        # 14 pictures: at split.val 0.15 every character has two val faces to rank
        [
            sys.executable,
            "benchmarks/incremental.py",
            "--pictures",
            "14",
            "--whole",
            "--epochs",
            "1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    for mode in ("temporary server per stage", "one long-lived server"):
        line = next(line for line in process.stdout.splitlines() if line.startswith(mode))
        assert re.search(
            r"full +\d+\.\d s \| add one +\d+\.\d s \(\d\.\d\d of full\) \| no-op +\d+\.\d s", line
        ), line
    seconds = r"\d+\.\d s"
    assert re.search(rf"^full build +{seconds}$", process.stdout, re.M), process.stdout
    assert re.search(rf"^no-op `dvc repro` +{seconds}$", process.stdout, re.M), process.stdout
    added = re.search(
        rf"^add one, no retraining +{seconds} \((\d\.\d\d) of full: `dvc repro split` "
        rf"{seconds} \+ `gallery rebuild` {seconds}, forked by the warm runner\)$",
        process.stdout,
        re.M,
    )
    retrained = re.search(
        rf"^add one, retrained +{seconds} \((\d\.\d\d) of full", process.stdout, re.M
    )
    assert added and retrained, process.stdout
    # Even at one epoch, retraining costs more than rebuilding the gallery.
    assert float(added.group(1)) < float(retrained.group(1))
