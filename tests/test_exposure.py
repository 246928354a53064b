"""What the project exposes by default: apps listen on this machine only, no usage
telemetry leaves it, and names from the outside cannot forge terminal output."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anime_face_id.cli import face_lines, shown
from anime_face_id.identify_results import PictureResult
from tests.support.processes import answers, free_port

REPO = Path(__file__).resolve().parents[1]
TELEMETRY = ("PREFECT_SERVER_ANALYTICS_ENABLED", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")


def test_picture_names_cannot_forge_lines_or_move_the_cursor() -> None:
    name = "cat.png\nfake.png: 1 face\x1b[2J\u202egnp.exe"
    (line,) = face_lines(PictureResult(name, "error", "not an image: unrecognised format"))
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line
    assert line.startswith("cat.png\\x0afake.png: 1 face\\x1b[2J\\u202egnp.exe: error: ")
    assert shown("Nishikino Maki 西木野真姫.png") == "Nishikino Maki 西木野真姫.png"


def settings_seen_by_a_flow(extra: dict[str, str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in TELEMETRY} | extra
    probe = (
        "import os, flows\n"
        "from prefect.settings import get_current_settings\n"
        "print(get_current_settings().server.analytics_enabled)\n"
        "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], os.environ['DO_NOT_TRACK'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_flows_send_no_usage_telemetry_unless_the_user_opts_in() -> None:
    assert settings_seen_by_a_flow({}) == ["False", "true", "true"]
    opted_in = {"PREFECT_SERVER_ANALYTICS_ENABLED": "true", "MLFLOW_DISABLE_TELEMETRY": "false"}
    assert settings_seen_by_a_flow(opted_in)[:2] == ["True", "false"]


def test_make_exports_the_same_telemetry_settings() -> None:
    env = {k: v for k, v in os.environ.items() if k not in TELEMETRY}
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "-f", "-", "show"],
        input=f"include {REPO / 'Makefile'}\nshow:\n\t@env\n",
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    exported = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert exported["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert exported["MLFLOW_DISABLE_TELEMETRY"] == "true"


def listening_addresses(port: int) -> set[str]:
    """Local addresses of listening TCP sockets on ``port`` (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("app", ["apps/review.py", "apps/identify.py"])
def test_streamlit_run_as_documented_listens_on_loopback_only(app: str, tmp_path) -> None:
    """`streamlit run apps/<app>.py` from the project root, with no address flag (the
    apps' docstrings say so): the project's .streamlit/config.toml must bind 127.0.0.1."""
    port = free_port()
    env = {**os.environ, "HOME": str(tmp_path)}  # no personal ~/.streamlit settings
    command = [sys.executable, "-m", "streamlit", "run", app, "--server.port", str(port)]
    log = (tmp_path / "streamlit.log").open("wb")
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 90
        while not answers(f"http://127.0.0.1:{port}/_stcore/health"):
            assert process.poll() is None, (tmp_path / "streamlit.log").read_text()
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.5)
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and nothing else
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
