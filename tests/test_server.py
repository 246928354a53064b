"""The project's long-lived Prefect server (issue 12): started once in the background with
its data under the project, reused by later commands (a bare `dvc repro` stage too, so runs
stay in the UI), stopped on request; a server the user configured always wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.prefect_server import quiet_prefect_env
from tests.support.processes import answers, free_port
from tests.support.project import prefect_post

REPO = Path(__file__).resolve().parents[1]


def server_command(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.server", *args, "--root", str(root)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def unconfigured_env(home: Path) -> dict[str, str]:
    """A shell with no Prefect API configured (nor a profile that names one)."""
    env = {**os.environ, **quiet_prefect_env(home), "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    return env


def test_a_configured_server_wins_and_nothing_is_started(tmp_path: Path) -> None:
    env = {**unconfigured_env(tmp_path / "home"), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    process = server_command(tmp_path, env, "url")
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == "http://127.0.0.1:9/api"
    assert not (tmp_path / ".prefect").exists()


def test_a_root_that_is_no_folder_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    process = server_command(tmp_path / "missing", unconfigured_env(tmp_path / "home"), "url")
    assert process.returncode == 2
    assert "not a folder" in process.stderr and "Traceback" not in process.stderr
    assert not (tmp_path / "missing").exists()


@pytest.mark.slow  # a real Prefect server and a stage process
def test_the_project_server_is_started_once_kept_and_stopped(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    port = free_port()
    env = {**unconfigured_env(tmp_path / "home"), "PREFECT_PORT": str(port)}
    url = f"http://127.0.0.1:{port}/api"
    try:
        started = server_command(root, env, "start")
        assert started.returncode == 0, started.stdout + started.stderr
        assert answers(f"{url}/health")
        assert (root / ".prefect" / "prefect.db").is_file()  # its data under the project
        pid = (root / ".prefect" / "server.pid").read_text()
        # What the server writes goes to a file, not to a pipe nobody reads (`prefect
        # server start --background` leaves it so, and the server died at its first
        # logged error): its output, and the file its stdout and stderr are open on.
        log = root / ".prefect" / "server.log"
        assert "View the API reference documentation" in log.read_text()
        for descriptor in (1, 2):
            assert Path(f"/proc/{pid}/fd/{descriptor}").resolve() == log.resolve()

        again = server_command(root, env, "url")
        assert again.stdout.strip() == url and "starting" not in again.stderr
        assert (root / ".prefect" / "server.pid").read_text() == pid

        # A stage run as a bare `dvc repro` runs it (no PREFECT_API_URL) reports there.
        (root / "pictures" / "alice").mkdir(parents=True)
        (root / "params.yaml").write_text(
            yaml.safe_dump(
                {
                    "characters": [{"name": "Alice"}],
                    "collect": {"backend": "folder", "folder": "pictures"},
                }
            )
        )
        stage = subprocess.run(
            ["sh", str(REPO / "flows" / "run"), "collect"],
            cwd=root,
            env={**env, "ANIME_FACE_ID_PYTHON": sys.executable},
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = stage.stdout + stage.stderr
        assert "Starting temporary server" not in output, output
        runs = prefect_post(url, "flow_runs/filter", {})
        assert [run["name"] for run in runs], output  # the collect run, kept on the server
    finally:
        stopped = server_command(root, env, "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not answers(f"{url}/health")
    assert not (root / ".prefect" / "api_url").exists()


@pytest.mark.slow  # a real Prefect server
def test_two_commands_starting_the_server_at_once_share_one(tmp_path: Path) -> None:
    """`make prefect-ui` beside `make pipeline`: both ask for the project's server before
    it answers. One starts it, the other waits for it; neither fails on the taken port."""
    root = tmp_path / "project"
    root.mkdir()
    port = free_port()
    env = {**unconfigured_env(tmp_path / "home"), "PREFECT_PORT": str(port)}
    url = f"http://127.0.0.1:{port}/api"
    command = [sys.executable, "-m", "flows.server", "url", "--root", str(root)]
    try:
        both = [
            subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [process.communicate(timeout=300) for process in both]
        for process, (stdout, stderr) in zip(both, outputs, strict=True):
            assert process.returncode == 0, stdout + stderr
            assert stdout.strip() == url
        assert sum("starting" in stderr for _, stderr in outputs) == 1, outputs
        pid = int((root / ".prefect" / "server.pid").read_text())
        os.kill(pid, 0)  # the pid file names the server that answers
    finally:
        stopped = server_command(root, env, "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not answers(f"{url}/health")


def test_stop_leaves_alone_a_program_that_took_a_dead_servers_pid(tmp_path: Path) -> None:
    # A server that died (a crash, a reboot) leaves its pid file; the pid may now be
    # another program's, which `prefect server stop` would signal.
    root = tmp_path / "project"
    (root / ".prefect").mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (root / ".prefect" / "server.pid").write_text(str(bystander.pid))
        stopped = server_command(root, unconfigured_env(tmp_path / "home"), "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert bystander.poll() is None  # still running
        assert f"pid {bystander.pid}) is gone and the pid is another program (sleep 60)" in (
            stopped.stdout
        )
        assert not (root / ".prefect" / "server.pid").exists()
    finally:
        bystander.kill()
        bystander.wait()
    # a pid of no process at all: the same, said so
    (root / ".prefect" / "server.pid").write_text(str(bystander.pid))
    stopped = server_command(root, unconfigured_env(tmp_path / "home"), "stop")
    assert stopped.returncode == 0 and "is no process: left alone" in stopped.stdout
