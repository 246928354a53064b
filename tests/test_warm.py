"""The warm stage runner (issue 12): a stage it forks behaves as `python -m flows.<stage>`
would (outputs, console, exit status, the project's current code), and whenever what it
imported could differ, or it is gone, the stage runs cold instead."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from flows import warm
from flows.warm_client import (
    FORWARDED,
    SOCKET_NAME,
    hand_over,
    inside,
    receive_message,
    send_message,
)
from tests.support.processes import as_in_a_terminal
from tests.support.project import Project, make_project
from tests.support.synthetic import PIPELINE_NAMES, write_picture_folder
from tests.support.warm import forked_stages, warm_runner

pytestmark = pytest.mark.slow  # real runner processes importing Prefect and torch


def times_out(text: str) -> str:
    """What two runs of a stage print alike: without clock times, run names and ids."""
    text = re.sub(r"\d\d:\d\d:\d\d\.\d+ \| \w+ +\| ", "", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", "<time>", text)
    text = re.sub(r"Flow run '[\w-]+'", "Flow run", text)
    text = re.sub(r"(flow-run/|Task run ')[\w-]+", r"\1<id>", text)
    return text


@pytest.fixture
def project(tmp_path: Path, prefect_api: dict[str, str]) -> Project:
    """Two characters to collect from a picture folder."""
    project = make_project(tmp_path, {**prefect_api, "ANIME_FACE_ID_PYTHON": sys.executable})
    pictures = write_picture_folder(tmp_path / "pictures", PIPELINE_NAMES[:2], 3, 64)
    project.set_params(
        characters=[{"name": name} for name in PIPELINE_NAMES[:2]],
        collect={"backend": "folder", "folder": str(pictures)},
    )
    return project


def collect(
    project: Project, preexec_fn=None, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """The collect stage through flows/run, with ``env`` over the project's environment."""
    return subprocess.run(
        ["sh", "flows/run", "collect"],
        cwd=project.root,
        env={**project.env, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def test_a_forked_stage_writes_and_prints_what_a_cold_one_does(project: Project) -> None:
    with warm_runner(project.root, project.env) as log:
        forked = collect(project)
        assert forked.returncode == 0, forked.stdout + forked.stderr
        assert [stage for stage, _ in forked_stages(log)] == ["collect"]
        manifest = (project.root / "data/raw/manifest.csv").read_text()

        for outputs in ("data/raw",):
            subprocess.run(["rm", "-rf", outputs], cwd=project.root, check=True)
        cold = collect(project, ANIME_FACE_ID_WARM="0")
        assert cold.returncode == 0, cold.stdout + cold.stderr
        assert len(forked_stages(log)) == 1  # this one was not handed to the runner

    assert times_out(manifest) == times_out((project.root / "data/raw/manifest.csv").read_text())
    assert times_out(forked.stdout) == times_out(cold.stdout)
    assert "Images per character" in forked.stdout + forked.stderr


def test_a_forked_stage_runs_the_code_as_edited_after_the_runner_started(
    project: Project,
) -> None:
    with warm_runner(project.root, project.env) as log:
        code = project.root / "anime_face_id" / "collect.py"
        code.write_text(code.read_text() + '\nprint("edited after the runner started")\n')
        forked = collect(project)
        assert forked.returncode == 0, forked.stderr
        assert "edited after the runner started" in forked.stdout
        assert forked_stages(log), log.read_text()


def test_a_failing_stage_exits_with_its_status_and_message(project: Project) -> None:
    project.params_path.write_text(yaml.safe_dump({"characters": "Alice"}))
    cold = collect(project, ANIME_FACE_ID_WARM="0")
    with warm_runner(project.root, project.env) as log:
        forked = collect(project)
        assert forked_stages(log)
    assert cold.returncode == 2
    assert (forked.returncode, forked.stderr) == (cold.returncode, cold.stderr)
    assert "error:" in forked.stderr and "Traceback" not in forked.stderr


def test_a_variable_read_at_import_that_differs_runs_the_stage_cold(project: Project) -> None:
    with warm_runner(project.root, project.env) as log:
        cold = collect(project, OMP_NUM_THREADS="1")
        assert cold.returncode == 0, cold.stderr
        assert forked_stages(log) == []
        assert "declined collect: an import-time environment variable differs" in log.read_text()


def test_the_forked_stage_reports_to_the_prefect_api_of_its_own_environment(
    project: Project,
) -> None:
    """`make pipeline` sets PREFECT_API_URL for DVC alone, not for the runner: the stage
    re-reads Prefect's settings, so it reports there (not to a temporary server)."""
    api_url = project.env["PREFECT_API_URL"]
    runner_env = {name: value for name, value in project.env.items() if name != "PREFECT_API_URL"}
    with warm_runner(project.root, runner_env) as log:
        forked = collect(project)
        assert forked.returncode == 0, forked.stderr
        assert len(forked_stages(log)) == 1
    output = forked.stdout + forked.stderr
    assert f"View at {api_url.removesuffix('/api')}/runs/flow-run/" in output
    assert "temporary server" not in output


def test_a_socket_left_by_a_dead_runner_runs_the_stage_cold(project: Project) -> None:
    home = project.root / ".prefect"
    home.mkdir()
    with inside(home):
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(SOCKET_NAME)
        stale.close()  # the file stays, nothing listens
    result = collect(project)
    assert result.returncode == 0, result.stderr
    assert (project.root / "data/raw/manifest.csv").is_file()


def ignoring_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("caller", [as_in_a_terminal, ignoring_ctrl_c])
def test_ctrl_c_reaches_the_forked_stage_and_leaves_no_process(project: Project, caller) -> None:
    """flows/run, not the stage, is in the terminal's process group: the signal is passed
    on, and the stage's exit status comes back. A stage that handles Ctrl-C itself (as
    every stage does) gets it even when started with it ignored, as a cold one would."""
    slow = project.root / "flows" / "collect.py"
    slow.write_text(
        "import signal, time\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "try:\n    print('sleeping', flush=True)\n    time.sleep(120)\n"
        "except KeyboardInterrupt:\n"
        "    print('stopped by Ctrl-C', flush=True)\n    raise SystemExit(130)\n"
    )
    with warm_runner(project.root, project.env) as log:
        process = subprocess.Popen(
            ["sh", "flows/run", "collect"], cwd=project.root, env=project.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, preexec_fn=caller,
        )  # fmt: skip
        before = []
        while "sleeping" not in before[-1:]:
            line = process.stdout.readline()
            assert line, "".join(before) + log.read_text()
            before.append(line.strip())
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        started = time.monotonic()
        output, _ = process.communicate(timeout=60)
        seconds = time.monotonic() - started
        what = "\n".join(before) + output + log.read_text()
        assert seconds < 15, what
        assert process.returncode == 130, what
        assert "stopped by Ctrl-C" in output, what
        [(_, pid)] = forked_stages(log)
        assert not warm._alive(pid), what


def test_the_server_stop_stops_the_runner(project: Project) -> None:
    with warm_runner(project.root, project.env):
        assert warm.is_running(project.root)
        pid = int((project.root / ".prefect" / warm.PID_NAME).read_text().split()[0])
        subprocess.run(
            [sys.executable, "-m", "flows.server", "stop", "--root", str(project.root)],
            cwd=project.root, env=project.env, capture_output=True, timeout=120,
        )  # fmt: skip
        assert not warm._alive(pid)
        assert not warm.is_running(project.root)
        assert not (project.root / ".prefect" / SOCKET_NAME).exists()


def test_two_runners_started_at_once_leave_one_and_the_stop_ends_it(project: Project) -> None:
    """Two commands starting the project's server at once each start a runner: the second
    to take the lock leaves at once, so no runner outlives the server's stop."""
    home = project.root / ".prefect"
    home.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "flows.warm", "--root", str(project.root)]
    both = [
        subprocess.Popen(
            command,
            cwd=project.root,
            env=project.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 120
        while not warm.is_running(project.root):
            assert time.monotonic() < deadline, (home / warm.LOG_NAME).read_text()
            time.sleep(0.1)
        while all(process.poll() is None for process in both):  # the second leaves at once
            assert time.monotonic() < deadline, (home / warm.LOG_NAME).read_text()
            time.sleep(0.1)
        time.sleep(warm.CHECK_EVERY_S + 1)  # a runner that lost its socket would leave now
        left = [process for process in both if process.poll() is not None]
        assert len(left) == 1, (home / warm.LOG_NAME).read_text()
        assert "another runner is starting or serving" in (home / warm.LOG_NAME).read_text()
        [serving] = [process for process in both if process.poll() is None]
        assert int((home / warm.PID_NAME).read_text().split()[0]) == serving.pid
        assert warm.stop(project.root)
        serving.wait(timeout=30)
    finally:
        for process in both:
            process.kill()
            process.wait(timeout=30)


def run_as_stage(project: Project, code: str, preexec_fn=None, **env: str):
    """``code`` as the collect stage's flow module, run through flows/run."""
    (project.root / "flows" / "collect.py").write_text(code)
    return collect(project, preexec_fn, timeout=120, **env)


def test_a_stage_ends_as_a_cold_one_would_by_exception_or_by_signal(project: Project) -> None:
    failing = "raise RuntimeError('boom')\n"
    killed = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"  # as the OOM killer
    cold = [run_as_stage(project, code, ANIME_FACE_ID_WARM="0") for code in (failing, killed)]
    with warm_runner(project.root, project.env) as log:
        warm_runs = [run_as_stage(project, code) for code in (failing, killed)]
        assert len(forked_stages(log)) == 2, log.read_text()
    for forked, fresh in zip(warm_runs, cold, strict=True):
        assert forked.returncode == fresh.returncode, forked.stderr
    assert warm_runs[0].returncode == 1 and "RuntimeError: boom" in warm_runs[0].stderr
    assert warm_runs[1].returncode == -signal.SIGKILL


def test_a_signal_the_caller_ignores_stays_ignored_in_the_stage(project: Project) -> None:
    """`nohup dvc repro`: a stage must survive the terminal closing, warm or cold."""
    code = "import signal\nprint(signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)\n"

    def nohup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    with warm_runner(project.root, project.env) as log:
        plain = run_as_stage(project, code, preexec_fn=as_in_a_terminal)
        ignoring = run_as_stage(project, code, preexec_fn=nohup)
        assert len(forked_stages(log)) == 2, log.read_text()
    assert (plain.stdout.strip(), ignoring.stdout.strip()) == ("False", "True")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to narrow to one")
def test_a_stage_pinned_to_other_cpus_runs_cold(project: Project) -> None:
    """Thread pools size themselves from the CPU affinity as they load: the runner's would
    ignore `taskset`."""
    code = "import os\nprint(len(os.sched_getaffinity(0)))\n"
    one = min(os.sched_getaffinity(0))
    with warm_runner(project.root, project.env) as log:
        pinned = run_as_stage(project, code, preexec_fn=lambda: os.sched_setaffinity(0, {one}))
        assert forked_stages(log) == []
        assert "declined collect: CPU affinity" in log.read_text()
    assert pinned.stdout.strip() == "1"


def test_after_a_decline_the_caller_handles_signals_as_before(tmp_path: Path) -> None:
    """The console script goes on in its own process when the runner declines: Ctrl-C must
    still raise KeyboardInterrupt there, and each signal keep the handler it had."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with inside(tmp_path):
        listener.bind(SOCKET_NAME)
    listener.listen(1)
    requests = []

    def decline() -> None:
        connection, _ = listener.accept()
        request, fds = receive_message(connection, max_fds=3)
        for fd in fds:
            os.close(fd)
        requests.append(request)
        send_message(connection, {"accepted": False, "why": "a test"})
        connection.close()

    thread = threading.Thread(target=decline, daemon=True)
    thread.start()
    interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)  # as at start
    try:
        before = {signum: signal.getsignal(signum) for signum in FORWARDED}
        target = {"console": True, "argv0": "anime-face-id", "path0": "bin"}
        hand_over(str(tmp_path), target, ["gallery", "info"], "anime-face-id")
        thread.join(timeout=10)
        assert [(r["console"], r["args"]) for r in requests] == [(True, ["gallery", "info"])]
        assert {signum: signal.getsignal(signum) for signum in FORWARDED} == before
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler runs at the next bytecode
    finally:
        signal.signal(signal.SIGINT, interrupt)
        listener.close()
