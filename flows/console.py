"""The `anime-face-id` console script (pyproject.toml): the command runs in a process forked
by the project's warm stage runner (flows/warm.py) when one of this user's listens in the
working folder's .prefect/, so it starts with torch, OpenCV and NumPy already imported
(about 1 s of a `gallery rebuild` or `identify`); else, or when the runner declines, in
this process, as `anime_face_id.cli` always does. Either way it prints, writes and exits
alike (tests/test_cli.py). ANIME_FACE_ID_WARM=0 turns the runner off. Importing `flows`
sets, both ways, what every stage process sets (flows/__init__.py: telemetry off)."""

from __future__ import annotations

import os
import sys

from flows.warm_client import SOCKET_NAME, hand_over


def _runner_folder() -> str | None:
    try:
        folder = os.path.join(os.getcwd(), ".prefect")
    except OSError:  # the working folder was removed
        return None
    return folder if os.path.exists(os.path.join(folder, SOCKET_NAME)) else None


def run() -> int:
    folder = _runner_folder()
    if folder is not None:
        target = {"console": True, "argv0": sys.argv[0], "path0": sys.path[0]}
        hand_over(folder, target, sys.argv[1:], "anime-face-id")
    from anime_face_id.cli import run as run_here

    return run_here()
