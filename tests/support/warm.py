"""The warm stage runner (flows/warm.py) started for a test project, and stopped after."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from flows import warm


@contextlib.contextmanager
def warm_runner(root: Path, env: dict[str, str], ready_s: float = 120) -> Iterator[Path]:
    """A runner for the project at ``root`` started with ``env``; yields its log."""
    home = root / ".prefect"
    home.mkdir(exist_ok=True)
    log = home / warm.LOG_NAME
    with log.open("a") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.warm", "--root", str(root)],
            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=errors,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + ready_s
        while not warm.is_running(root):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield log
    finally:
        warm.stop(root)
        process.wait(timeout=30)


def forked_stages(log: Path) -> list[tuple[str, int]]:
    """(stage, pid) of every stage the runner started, from its log."""
    return [
        (stage, int(pid))
        for stage, pid in re.findall(r"stage (\w+) runs as (\d+)", log.read_text())
    ]


def forked_commands(log: Path) -> list[int]:
    """The pid of every `anime-face-id` command the runner started, from its log."""
    return [int(pid) for pid in re.findall(r"command anime-face-id runs as (\d+)", log.read_text())]
