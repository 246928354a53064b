"""Ctrl-C stops a run within seconds and records nothing it cut short as a failure (issue 12):
the next run fetches what was in flight, as if the interrupted run had never started it."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from PIL import Image

from anime_face_id import interrupt
from anime_face_id.config import CollectConfig
from anime_face_id.download import Downloader
from anime_face_id.fileio import TMP_PREFIX
from tests.support.processes import as_in_a_terminal, run_stage_flow, stage_command, stage_env
from tests.support.project import Project, make_project
from tests.support.warm import forked_stages, warm_runner
from tests.support.webserver import Response, WebServer, web_server

__all__ = ["web_server"]  # a fixture used below


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (seed * 37 % 256, seed * 91 % 256, 120)).save(buffer, "JPEG")
    return buffer.getvalue()


def trickle(body: bytes) -> Response:
    """The whole body, 100 bytes a second: a download that would take minutes."""
    return Response(body=body, content_type="image/jpeg", chunk_size=100, chunk_delay=1.0)


@pytest.fixture(autouse=True)
def fresh_run():
    interrupt.reset()
    yield
    interrupt.reset()


def test_a_stop_cuts_a_download_in_flight_and_refuses_new_ones(web_server: WebServer) -> None:
    url = web_server.add("/slow.jpg", trickle(jpeg(1)))
    config = CollectConfig(allow_networks=["127.0.0.0/8"], retries=0, deadline_s=120)
    outcome: list[BaseException] = []

    def fetch() -> None:
        try:
            downloader.fetch(url)
        except BaseException as error:  # Interrupted is a BaseException, like Ctrl-C
            outcome.append(error)

    with Downloader(config) as downloader:
        worker = threading.Thread(target=fetch)
        worker.start()
        while web_server.count("/slow.jpg") == 0:
            time.sleep(0.05)
        time.sleep(0.5)  # the body is trickling
        started = time.monotonic()
        interrupt.request_stop()
        worker.join(timeout=30)
        assert not worker.is_alive()
        assert time.monotonic() - started < 5  # cut at once, not at the 120 s deadline
        assert [type(error) for error in outcome] == [interrupt.Interrupted]
        with pytest.raises(interrupt.Interrupted):
            downloader.fetch(url)  # nothing new starts while stopping
    assert web_server.count("/slow.jpg") == 1


def test_interrupted_is_not_an_item_failure() -> None:
    # Handlers of an item's own failures catch Exception; an interruption must pass them.
    assert not issubclass(interrupt.Interrupted, Exception)
    hooks: list[str] = []
    with interrupt.on_stop(lambda: hooks.append("cut")):
        interrupt.request_stop()
    with interrupt.on_stop(lambda: hooks.append("late")):  # already stopping: called at once
        pass
    interrupt.request_stop()  # hooks that left are not called again
    assert hooks == ["cut", "late"]


def slow_pictures(web_server: WebServer, names: tuple[str, ...], count: int) -> str:
    """A urls.csv of ``count`` pictures that trickle the first time they are asked for."""
    rows = ["character,url"]
    for index in range(count):
        path = f"/{index}.jpg"
        body = jpeg(index)
        web_server.add(path, trickle(body), Response(body=body, content_type="image/jpeg"))
        rows.append(f"{names[index % len(names)]},{web_server.url(path)}")
    return "\n".join(rows) + "\n"


def ctrl_c_while_downloading(
    command: list[str], cwd: Path, env: dict[str, str], web_server: WebServer, count: int
) -> tuple[int, float, str]:
    """Start ``command``, press Ctrl-C once ``count`` downloads trickle; (exit status,
    seconds from Ctrl-C to exit, output)."""
    return ctrl_c_when(
        command, cwd, env, lambda: sum(web_server.counts().values()) >= count, timeout_s=120
    )


def ctrl_c_when(
    command: list[str],
    cwd: Path,
    env: dict[str, str],
    ready: Callable[[], bool],
    timeout_s: float = 180,
    before: Callable[[int], None] | None = None,
) -> tuple[int, float, str]:
    """Start ``command`` as from a terminal, press Ctrl-C once ``ready()`` (``before(pid)``
    just before); (exit status, seconds from Ctrl-C to exit, output)."""
    log = cwd / "interrupted.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=as_in_a_terminal,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        if before is not None:
            before(process.pid)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        started = time.monotonic()
        process.wait(timeout=60)
    return process.returncode, time.monotonic() - started, log.read_text()


def assert_nothing_collected(raw: Path) -> None:
    assert [p for p in raw.rglob("*") if p.name.startswith(TMP_PREFIX)] == []
    assert all(journal.read_text() == "" for journal in raw.glob("*/_journal.jsonl"))
    assert not (raw / "manifest.csv").exists()


@pytest.mark.slow  # a Prefect server for the session, and two stage processes
def test_ctrl_c_stops_collect_in_seconds_and_the_next_run_fetches_everything(
    tmp_path: Path, web_server: WebServer, prefect_api: dict[str, str]
) -> None:
    names = ("Alice", "Bob")
    (tmp_path / "urls.csv").write_text(slow_pictures(web_server, names, 8))
    params = {
        "characters": [{"name": name} for name in names],
        "collect": {
            "backend": "urls",
            "urls": "urls.csv",
            "allow_networks": ["127.0.0.0/8"],
            "workers": 4,
            "retries": 0,
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = stage_env(prefect_api)
    command = stage_command("collect")
    returncode, seconds, text = ctrl_c_while_downloading(command, tmp_path, env, web_server, 8)
    assert returncode == 130, text
    assert seconds < 15, text
    assert "collect: stopped by Ctrl-C" in text or "stopped" in text
    assert_nothing_collected(tmp_path / "data" / "raw")

    again = run_stage_flow("collect", tmp_path, prefect_api)
    assert again.returncode == 0, again.stdout + again.stderr
    manifest = (tmp_path / "data" / "raw" / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 8  # every picture, none taken for a failure


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["cold", "warm"])
def test_ctrl_c_stops_dvc_repro_in_seconds_and_dvc_records_nothing(
    tmp_path: Path, web_server: WebServer, prefect_api: dict[str, str], runner: str
) -> None:
    """Ctrl-C in the terminal running `dvc repro` reaches DVC and the stage alike: both
    stop within seconds, dvc.lock records no collect, and the next `dvc repro` collects
    everything; also when the warm stage runner forked the stage (flows/run passes the
    signal on)."""
    project = make_project(tmp_path, prefect_api)
    with contextlib.ExitStack() as stack:
        if runner == "warm":
            log = stack.enter_context(warm_runner(project.root, project.env))
        interrupt_dvc_repro(project, web_server)
        if runner == "warm":
            assert [stage for stage, _ in forked_stages(log)] == ["collect", "collect"]


@pytest.mark.slow
def test_ctrl_c_stops_the_pipeline_flow_in_seconds_and_dvc_records_nothing(
    tmp_path: Path, web_server: WebServer, prefect_api: dict[str, str]
) -> None:
    """`python -m flows.pipeline` (README) runs `dvc repro` per stage as Prefect tasks:
    Ctrl-C reaches the flow, DVC and the stage alike (issue 12: it used to take SIGTERM)."""
    project = make_project(tmp_path, prefect_api)
    pipeline = [sys.executable, "-m", "flows.pipeline", "--until", "collect"]
    returncode, text = interrupt_dvc_repro(project, web_server, pipeline)
    assert returncode == 130, text
    assert "collect: stopped by Ctrl-C" in text, text  # the stage's line, through DVC's
    assert text.rstrip().endswith(
        "pipeline: stopped by Ctrl-C; the next run goes on from the stage it stopped in"
    ), text


def interrupt_dvc_repro(
    project: Project, web_server: WebServer, command: list[str] | None = None
) -> tuple[int, str]:
    """Ctrl-C while ``command`` (`dvc repro collect`) downloads; returns its exit status
    and what it printed."""
    (project.root / "urls.csv").write_text(slow_pictures(web_server, ("Alice", "Bob"), 6))
    params = project.params()
    params["characters"] = [{"name": "Alice"}, {"name": "Bob"}]
    params["collect"].update(
        backend="urls", urls="urls.csv", allow_networks=["127.0.0.0/8"], workers=4, retries=0
    )
    project.params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = [str(Path(sys.executable).parent / "dvc"), "repro", "collect"]

    returncode, seconds, text = ctrl_c_while_downloading(
        command or dvc, project.root, project.env, web_server, 6
    )
    assert returncode != 0, text
    assert seconds < 15, text
    assert "Traceback" not in text, text
    assert_nothing_collected(project.root / "data" / "raw")
    lock = project.root / "dvc.lock"
    assert not lock.exists() or "collect" not in yaml.safe_load(lock.read_text())["stages"]

    project.dvc("repro", "collect")
    manifest = (project.root / "data" / "raw" / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 6
    return returncode, text


def chromium_under(pid: int) -> set[int]:
    """The Chromium and chromedriver processes descended from ``pid`` (they may start
    process groups of their own, so they are followed by parent)."""
    listing = subprocess.run(
        ["ps", "-o", "pid=,ppid=,comm=", "-e"], capture_output=True, text=True, check=True
    ).stdout
    children: dict[int, list[tuple[int, str]]] = {}
    for line in listing.splitlines():
        child, parent, name = line.split(maxsplit=2)
        children.setdefault(int(parent), []).append((int(child), name))
    found, stack = set(), [pid]
    while stack:
        for child, name in children.get(stack.pop(), []):
            stack.append(child)
            if "chrom" in name:
                found.add(child)
    return found


def alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):  # gone meanwhile
            os.kill(pid, 0)
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] != "Z":  # a zombie has exited
                living.add(pid)
    return living


@pytest.mark.slow  # a Prefect server for the session, a stage process and Chromium
@pytest.mark.browser
def test_ctrl_c_stops_a_google_search_in_seconds_with_its_browser(
    tmp_path: Path, web_server: WebServer, prefect_api: dict[str, str]
) -> None:
    """The google backend searches in Chromium, in a worker process of its own (issue 12:
    Ctrl-C did not stop such a run). Pressed while the results page is still loading, the
    stage exits within seconds, its browser with it, and nothing is recorded."""
    page = b"<html><body>" + b"<p>results are coming</p>" * 400 + b"</body></html>"
    web_server.add(
        "/search", Response(body=page, content_type="text/html", chunk_size=100, chunk_delay=1.0)
    )
    params = {
        "characters": [{"name": "Alice"}, {"name": "Bob"}],
        "collect": {
            "backend": "google",
            "search_url": web_server.url("/search?q={query}"),
            "chromedriver": "/usr/bin/chromedriver",
            "search_timeout_s": 300,
            "retries": 0,
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    browsers: set[int] = set()

    def browsers_searching(pid: int) -> None:
        time.sleep(2)  # the page is trickling into the browser
        browsers.update(chromium_under(pid))
        assert browsers, "no Chromium was searching"

    returncode, seconds, text = ctrl_c_when(
        stage_command("collect"),
        tmp_path,
        stage_env(prefect_api),
        lambda: web_server.count("/search") >= 1,
        before=browsers_searching,
    )
    assert returncode == 130, text
    assert seconds < 15, text
    assert "Traceback" not in text, text
    deadline = time.monotonic() + 10  # the browser's last processes have exited by now
    while alive(browsers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive(browsers) == set()
    raw = tmp_path / "data" / "raw"
    assert not list(raw.glob("*/_done.json"))
    assert not (raw / "manifest.csv").exists()


def noise_pictures(folder: Path, count: int, seed: int) -> None:
    """Pictures with no face in them: every one is a 'no face' reject, quick to judge."""
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=80)


@pytest.mark.slow  # a Prefect server for the session, three stage processes
def test_ctrl_c_stops_crop_in_seconds_and_the_next_run_finishes_the_rest(
    tmp_path: Path, prefect_api: dict[str, str]
) -> None:
    names, pictures = ("Alice", "Bob"), 150
    for seed, name in enumerate(names):
        noise_pictures(tmp_path / "import" / name.lower(), pictures, seed)
    params = {
        "characters": [{"name": name} for name in names],
        "collect": {"backend": "folder", "folder": "import", "limit": pictures},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    collected = run_stage_flow("collect", tmp_path, prefect_api)
    assert collected.returncode == 0, collected.stdout + collected.stderr
    faces = tmp_path / "data" / "faces"
    returncode, seconds, text = ctrl_c_when(
        stage_command("crop"),
        tmp_path,
        stage_env(prefect_api),
        lambda: bool(list(faces.glob("*/_index.json"))),  # a character's first checkpoint
    )
    assert returncode == 130, text
    assert seconds < 15, text
    assert "Traceback" not in text, text
    assert [p for p in tmp_path.rglob("*") if p.name.startswith(TMP_PREFIX)] == []
    assert not (faces / "manifest.csv").exists()  # the stage's outputs are not written

    again = run_stage_flow("crop", tmp_path, prefect_api)
    assert again.returncode == 0, again.stdout + again.stderr
    rejects = (faces / "rejects.csv").read_text().splitlines()[1:]
    assert len(rejects) == len(names) * pictures  # every picture judged once: no face
    assert all("no face" in row for row in rejects)
