"""Running DVC from a flow: `dvc repro` as a task whose output lands in the Prefect log."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger, task
from prefect.settings import PREFECT_API_URL

from anime_face_id.errors import StageError


def dvc_executable() -> str:
    beside_python = Path(sys.executable).parent / "dvc"
    return str(beside_python) if beside_python.exists() else (shutil.which("dvc") or "dvc")


def stage_environment() -> dict[str, str]:
    """The stage flows report to the same Prefect API as this flow (a real server, or
    the test harness), and run with this interpreter (flows/run, the stages' cmd, reads
    ANIME_FACE_ID_PYTHON) unless the caller chose another."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("ANIME_FACE_ID_PYTHON", sys.executable)
    api_url = PREFECT_API_URL.value()
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@task(task_run_name="dvc-repro-{target}")
def dvc_repro(root: Path, target: str = "all") -> None:
    """`dvc repro` (of `target` and what it depends on, or of everything)."""
    logger = get_run_logger()
    command = [dvc_executable(), "repro", *([] if target == "all" else [target])]
    logger.info("$ %s", " ".join(command[1:]))
    process = subprocess.Popen(
        command,
        cwd=root,
        env=stage_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip()
        if line:
            logger.info("%s", line)
            tail = [*tail[-19:], line]
    if process.wait() != 0:
        raise StageError(
            f"dvc repro {target} failed (exit {process.returncode}):\n" + "\n".join(tail)
        )
