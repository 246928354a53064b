"""The whole pipeline as one Prefect flow, under the Prefect test harness: it pauses at
review for a sign-off, resumes with input given through the Prefect API, and completes;
a sign-off that never comes ends the run cleanly and a re-run picks up from there."""

from __future__ import annotations

import contextvars
import csv
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anime_face_id import layout
from tests.support.project import make_project

pytestmark = pytest.mark.slow

COLOURS = {"Alice": (220, 40, 40), "Bob": (40, 60, 220)}


def picture_folder(where: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        folder = where / "pictures" / name
        folder.mkdir(parents=True)
        for index in range(8):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (48, 48, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index}.png")
    return where / "pictures"


@pytest.fixture
def project(tmp_path):
    project = make_project(tmp_path)
    project.set_params(
        characters=[{"name": name} for name in COLOURS],
        collect={"backend": "folder", "folder": str(picture_folder(tmp_path))},
        crop={"detector": "none", "size": 32},
        review={"require_complete": True, "signoff": {"timeout_s": 600}},
        split={"val": 0.25, "test": 0.25, "min_per_character": 2},
        balance={"min_per_class": 8},
        train={"image_size": 32, "embedding_dim": 8, "p": 2, "k": 2, "epochs": 1}
        | {"batches_per_epoch": 2, "device": "cpu"},
        evaluate={"baseline": False},
    )
    return project


def read(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def run_in_thread(root: Path, until: str = "all") -> tuple[threading.Thread, dict]:
    from flows.pipeline import pipeline_flow

    outcome: dict = {}

    def target() -> None:
        outcome["state"] = pipeline_flow(root=str(root), until=until, return_state=True)

    # The harness's settings live in a context variable: carry it into the thread.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), daemon=True)
    thread.start()
    return thread, outcome


def wait_for_paused_run(timeout_s: float = 300):
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                limit=5,
                sort=FlowRunSort.START_TIME_DESC,
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                ),
            )
            if runs:
                return runs[0]
            time.sleep(1)
    raise AssertionError("the pipeline never paused for review")


def test_pauses_for_sign_off_and_completes_after_resume(project, prefect_harness):
    from prefect.flow_runs import resume_flow_run

    thread, outcome = run_in_thread(project.root)
    paused = wait_for_paused_run()
    # The form the Prefect UI shows on the paused run: counts and a link to the review app.
    from prefect.input.actions import read_flow_run_input
    from prefect.input.run_input import keyset_from_paused_state

    keyset = keyset_from_paused_state(paused.state)
    form = read_flow_run_input(keyset["description"], flow_run_id=paused.id)
    assert "**16 of 16** crops await review" in form and "http://127.0.0.1:8501" in form
    assert "| Alice |" in form
    schema = read_flow_run_input(keyset["schema"], flow_run_id=paused.id)
    assert {"reviewer", "accept_pending", "note"} <= set(schema["properties"])
    assert (project.root / layout.FACES_MANIFEST).exists()
    assert not (project.root / layout.CURATED_MANIFEST).exists()
    faces = read(project.root / layout.FACES_MANIFEST)
    # The reviewer rejects one crop in the meantime, then signs off accepting the rest.
    with (project.root / layout.DECISIONS).open("a", encoding="utf-8") as handle:
        handle.write(f"2026-01-01T00:00:00Z,{faces[0]['path']},reject,,,\n")
    resume_flow_run(paused.id, run_input={"reviewer": "tester", "accept_pending": True})
    thread.join(timeout=600)
    assert outcome["state"].is_completed(), outcome["state"].message

    curated = read(project.root / layout.CURATED_MANIFEST)
    assert faces[0]["path"] not in {row["path"] for row in curated}
    assert len(curated) == len(faces) - 1  # 16 crops, one rejected
    decisions = read(project.root / layout.DECISIONS)
    assert (
        sum(row["note"] == "accepted at sign-off by tester" for row in decisions) == len(faces) - 1
    )
    assert (project.root / layout.BALANCED_TRAIN).exists()
    assert (project.root / "metrics" / "eval.json").exists()  # the whole pipeline ran


def test_sign_off_timeout_ends_cleanly_and_rerun_continues(project, prefect_harness):
    project.set_params(review={"signoff": {"timeout_s": 3}})
    thread, outcome = run_in_thread(project.root, until="balance")
    thread.join(timeout=600)
    state = outcome["state"]
    assert state.is_failed()
    # Prefect's server fails a pause that times out ("never resumed") before the flow can
    # say why; the flow's own explanation is in its log.
    assert "no review sign-off within 3 s" in state.message or "never resumed" in state.message
    assert not (project.root / layout.CURATED_MANIFEST).exists()  # nothing half-applied
    decisions_before = (project.root / layout.DECISIONS).read_text()

    # The reviewer finishes in the app; the next run goes through without pausing.
    faces = read(project.root / layout.FACES_MANIFEST)
    with (project.root / layout.DECISIONS).open("a", encoding="utf-8") as handle:
        for face in faces:
            handle.write(f"2026-01-01T00:00:00Z,{face['path']},accept,,,\n")
    thread, outcome = run_in_thread(project.root, until="balance")
    thread.join(timeout=600)
    assert outcome["state"].is_completed(), outcome["state"].message
    assert len(read(project.root / layout.CURATED_MANIFEST)) == len(faces)
    assert not (project.root / "models" / "embedder.pt").exists()  # stopped at balance
    assert (project.root / layout.DECISIONS).read_text().startswith(decisions_before)


def test_without_a_configured_server_it_uses_the_projects_and_links_every_stage(project, tmp_path):
    """`python -m flows.pipeline` in a shell with no Prefect API: the project's server is
    started in the background, the run pauses there for the sign-off, and after it each
    stage is a task of the run, linked to the stage's own (tagged) flow run."""
    from tests.support.processes import free_port
    from tests.support.project import prefect_post

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in project.env.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_PORT=str(port))
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.pipeline", "--until", "balance"],
        cwd=project.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        paused = None
        deadline = time.monotonic() + 300
        while paused is None:
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the pipeline never paused for review"
            time.sleep(1)
            try:
                runs = prefect_post(
                    api,
                    "flow_runs/filter",
                    {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}},
                )
            except OSError:
                continue  # the server is still starting
            paused = runs[0] if runs else None
        assert (project.root / ".prefect" / "prefect.db").is_file()  # the project's server
        prefect_post(
            api,
            f"flow_runs/{paused['id']}/resume",
            {"run_input": {"reviewer": "tester", "accept_pending": True}},
        )
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output
        assert (project.root / layout.BALANCED_TRAIN).exists()

        tasks = prefect_post(api, "task_runs/filter", {})
        names = {task["name"] for task in tasks}
        assert {"collect", "crop", "review", "split", "balance"} <= names, names
        tag = f"pipeline:{paused['id']}"
        stages = prefect_post(api, "flow_runs/filter", {"flow_runs": {"tags": {"all_": [tag]}}})
        assert {"stage:review", "stage:balance"} <= {t for run in stages for t in run["tags"]}
        assert f"{api.removesuffix('/api')}/runs/flow-run/" in output  # the links, logged
    finally:
        if process.poll() is None:
            process.kill()
        subprocess.run(
            [sys.executable, "-m", "flows.server", "stop", "--root", str(project.root)],
            env=env,
            capture_output=True,
            timeout=120,
        )
