"""Running DVC from a flow: `dvc repro` of one stage as a task whose output lands in the
Prefect log, and whose stage flow run is linked from it.

The stage runs in its own process (its DVC cmd), so its flow run cannot be a subflow of
this one; it carries the tag ``pipeline:<this flow run's id>`` instead (``PIPELINE_TAG``
in its environment, read by ``flows._stage``), and the task finds it by that tag and
publishes a link to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import yaml
from prefect import get_run_logger, task
from prefect.settings import PREFECT_API_URL

from anime_face_id.errors import StageError
from tasks.reporting import PIPELINE_TAG

STOPPING_S = 30.0  # for an interrupted `dvc repro` to stop; stages stop within seconds


def dvc_executable() -> str:
    beside_python = Path(sys.executable).parent / "dvc"
    return str(beside_python) if beside_python.exists() else (shutil.which("dvc") or "dvc")


def stage_environment(tag: str | None = None) -> dict[str, str]:
    """The stage flows report to the same Prefect API as this flow (a real server, or
    the test harness), and run with this interpreter (flows/run, the stages' cmd, reads
    ANIME_FACE_ID_PYTHON) unless the caller chose another."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("ANIME_FACE_ID_PYTHON", sys.executable)
    api_url = PREFECT_API_URL.value()
    if api_url:
        env["PREFECT_API_URL"] = api_url
    if tag:
        env[PIPELINE_TAG] = tag
    return env


def stage_names(root: Path) -> list[str]:
    """dvc.yaml's stages in the order they are written (the order they run in)."""
    return list(yaml.safe_load((Path(root) / "dvc.yaml").read_text())["stages"])


@task(task_run_name="{stage}")
def dvc_repro_stage(root: Path, stage: str, tag: str) -> None:
    """`dvc repro --single-item <stage>` (run in dvc.yaml's order, so what it depends on is
    already up to date), then a link to the stage's own flow run."""
    _dvc_repro(root, ["--single-item", stage], stage_environment(tag))
    try:
        link_stage_runs(stage, tag)
    except Exception as error:  # a missing link must not fail a stage that ran
        get_run_logger().warning("%s: could not link its flow run: %s", stage, error)


def link_stage_runs(stage: str, tag: str) -> None:
    from prefect import get_client
    from prefect.artifacts import create_link_artifact
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    api_url = PREFECT_API_URL.value() or ""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag, f"stage:{stage}"])),
            sort=FlowRunSort.START_TIME_ASC,
            limit=20,
        )
    for run in runs:
        link = f"{api_url.removesuffix('/api')}/runs/flow-run/{run.id}"
        create_link_artifact(link, link_text=f"{stage} flow run {run.name}")
        get_run_logger().info("%s flow run: %s", stage, link)
    if not runs:
        get_run_logger().info("%s: up to date, nothing ran", stage)


def _dvc_repro(root: Path, arguments: list[str], env: dict[str, str]) -> None:
    logger = get_run_logger()
    command = [dvc_executable(), "repro", *arguments]
    target = arguments[-1] if arguments else "all"
    logger.info("$ dvc %s", " ".join(command[1:]))
    process = subprocess.Popen(
        command,
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",  # a stage's odd byte must not end the reading
    )
    tail: list[str] = []
    assert process.stdout is not None
    try:
        for line in _lines(process.stdout):
            logger.info("%s", line)
            tail = [*tail[-19:], line]
    except KeyboardInterrupt:  # Ctrl-C in the terminal reached DVC and the stage too
        for line in _last_words(process):  # such as "collect: stopped by Ctrl-C"
            logger.info("%s", line)
        raise
    if process.wait() != 0:
        raise StageError(
            f"dvc repro {target} failed (exit {process.returncode}):\n" + "\n".join(tail)
        )


def _lines(stream) -> Iterator[str]:
    """The lines of DVC's output worth logging: not blank, without trailing spaces."""
    for line in stream:
        if line := line.rstrip():
            yield line


def _last_words(process: subprocess.Popen, wait_s: float = STOPPING_S) -> list[str]:
    """The lines an interrupted `dvc repro` writes while it stops; it is waited for (it
    unlocks the repository on its way out), and terminated after ``wait_s``."""
    lines: list[str] = []

    def read_on() -> None:  # from where the interrupted loop left the stream
        lines.extend(_lines(process.stdout))

    reader = threading.Thread(target=read_on, daemon=True)  # a stage left alive may
    reader.start()  # keep the pipe open: this thread is not waited for past a moment
    try:
        process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait()
    reader.join(timeout=2)
    return list(lines)
