"""Stage commands run with the project's interpreter whatever the caller's PATH (issue 12).

In a fresh shell (no activated venv, PATH=/usr/bin:/bin) `.venv/bin/dvc repro` runs each
stage's cmd with /bin/sh; a bare `python -m flows.<stage>` there is the system Python, without
prefect. Every cmd is `sh flows/run <stage>`, which picks $ANIME_FACE_ID_PYTHON, else the
project's .venv/bin/python, else `python` on PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.project import Project, make_project
from tests.support.synthetic import PIPELINE_NAMES, write_picture_folder

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "flows" / "run"
FRESH_PATH = "/usr/bin:/bin"


def fake_python(path: Path, label: str) -> Path:
    """An executable that prints its label and its arguments, like a python would be run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho {label} "$@"\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A project with the launcher and a (fake) .venv, and a (fake) `python` on PATH."""
    root = tmp_path / "project"
    (root / "flows").mkdir(parents=True)
    shutil.copy2(LAUNCHER, root / "flows" / "run")
    return {
        "root": root,
        "venv_python": fake_python(root / ".venv" / "bin" / "python", "venv"),
        "path_bin": fake_python(tmp_path / "bin" / "python", "path").parent,
        "override": fake_python(tmp_path / "other" / "python3", "override"),
    }


def launch(
    layout: dict[str, Path], *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", "flows/run" if cwd is None else str(layout["root"] / "flows" / "run"), *args],
        cwd=cwd or layout["root"],
        env={"PATH": f"{layout['path_bin']}{os.pathsep}{FRESH_PATH}", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_launcher_is_executable_sh():
    assert os.access(LAUNCHER, os.X_OK)
    assert LAUNCHER.read_text().startswith("#!/bin/sh\n")


def test_the_project_venv_is_used_before_python_on_path(layout):
    process = launch(layout, "split", "--params", "other.yaml")
    assert process.returncode == 0, process.stderr
    assert process.stdout == "venv -m flows.split --params other.yaml\n"


def test_the_project_root_comes_from_the_launchers_path_not_the_cwd(layout, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    process = launch(layout, "crop", cwd=elsewhere)
    assert process.returncode == 0, process.stderr
    assert process.stdout == "venv -m flows.crop\n"


def test_anime_face_id_python_wins(layout):
    process = launch(layout, "train", ANIME_FACE_ID_PYTHON=str(layout["override"]))
    assert process.returncode == 0, process.stderr
    assert process.stdout == "override -m flows.train\n"


def test_without_a_usable_venv_python_on_path_is_used(layout):
    layout["venv_python"].chmod(0o644)  # not executable: as good as absent
    assert launch(layout, "review").stdout == "path -m flows.review\n"
    layout["venv_python"].unlink()
    assert launch(layout, "review").stdout == "path -m flows.review\n"


@pytest.mark.parametrize("stage", ["", "Split", "split2", "flows.split", "../split", "a b", "é"])
def test_a_bad_stage_name_is_refused(layout, stage):
    process = launch(layout, stage)
    assert process.returncode == 2
    assert process.stdout == ""  # no interpreter was started
    assert f"flows/run: invalid stage name '{stage}'" in process.stderr
    assert "usage: sh flows/run <stage>" in process.stderr


def test_no_stage_is_refused(layout):
    process = launch(layout)
    assert process.returncode == 2 and process.stdout == ""
    assert "flows/run: no stage given" in process.stderr


def test_every_stage_cmd_is_the_launcher():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages
    for name, stage in stages.items():
        assert stage["cmd"] == f"sh flows/run {name}", name
        assert "flows/run" in stage["deps"], name
        assert f"flows/{name}.py" in stage["deps"], name


def fresh_env(home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": FRESH_PATH, "HOME": str(home), **extra}


@pytest.mark.skipif(
    not (REPO / ".venv" / "bin" / "python").exists(), reason="no .venv in this checkout"
)
def test_this_checkouts_stage_cmd_works_in_a_fresh_shell(tmp_path):
    process = subprocess.run(
        ["sh", "flows/run", "split", "--help"],
        cwd=REPO,
        env=fresh_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr
    assert "Run the split stage." in process.stdout


def give_project_a_venv(project: Project) -> Path:
    """<project>/.venv as `make setup` leaves it: the venv running these tests (linked), or
    a stand-in that runs this interpreter. Returns the dvc to run, as the README says."""
    venv = project.root / ".venv"
    if sys.prefix != sys.base_prefix and (Path(sys.prefix) / "bin" / "python").exists():
        venv.symlink_to(sys.prefix, target_is_directory=True)
    else:
        (venv / "bin").mkdir(parents=True)
        python = venv / "bin" / "python"
        python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        python.chmod(0o755)
    (project.root / ".gitignore").write_text(".venv\n")
    dvc = venv / "bin" / "dvc"
    return dvc if dvc.exists() else Path(sys.executable).parent / "dvc"


@pytest.mark.slow
def test_dvc_repro_runs_a_stage_from_a_fresh_shell(tmp_path, prefect_api):
    """`.venv/bin/dvc repro collect` with PATH=/usr/bin:/bin and no PYTHONPATH."""
    names = PIPELINE_NAMES[:1]
    pictures = write_picture_folder(tmp_path / "pictures", names, count=2)
    project = make_project(tmp_path)
    project.set_params(
        characters=[{"name": name} for name in names],
        collect={"backend": "folder", "folder": str(pictures)},
    )
    dvc = give_project_a_venv(project)
    home = tmp_path / "home"
    home.mkdir()
    env = fresh_env(home, DVC_NO_ANALYTICS="1", **prefect_api)

    process = subprocess.run(
        [str(dvc), "repro", "collect"],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, f"{process.stdout[-4000:]}\n{process.stderr[-4000:]}"
    assert "Running stage 'collect'" in process.stdout
    assert "sh flows/run collect" in process.stdout
    assert (project.root / "data" / "raw" / "manifest.csv").is_file()
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())
    assert lock["stages"]["collect"]["cmd"] == "sh flows/run collect"


@pytest.mark.parametrize("python", ["python", "python3"])
def test_the_old_cmd_fails_in_a_fresh_shell(tmp_path, python):
    """What issue 12 saw: `python -m flows.<stage>` there is a python without prefect."""
    env = fresh_env(tmp_path)
    found = subprocess.run(
        ["sh", "-c", f"command -v {python} && {python} -c 'import prefect'"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    if found.returncode == 0:
        pytest.skip(f"{python} on {FRESH_PATH} has prefect")
    process = subprocess.run(
        ["sh", "-c", f"{python} -m flows.split --help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode != 0
    assert "No module named" in process.stderr or "not found" in process.stderr, process.stderr


def test_the_pipeline_flow_runs_its_stages_with_its_own_interpreter(monkeypatch):
    from tasks.dvc import stage_environment

    monkeypatch.delenv("ANIME_FACE_ID_PYTHON", raising=False)
    assert stage_environment()["ANIME_FACE_ID_PYTHON"] == sys.executable
    monkeypatch.setenv("ANIME_FACE_ID_PYTHON", "/opt/other/python")
    assert stage_environment()["ANIME_FACE_ID_PYTHON"] == "/opt/other/python"


def test_make_help_shows_the_ports_not_the_variable_names() -> None:
    process = subprocess.run(
        ["make", "--no-print-directory", "help", "PREFECT_PORT=4321"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": FRESH_PATH, "HOME": os.environ.get("HOME", "/tmp")},
        timeout=60,
    )
    assert process.returncode == 0, process.stderr
    assert "$(" not in process.stdout
    assert "http://127.0.0.1:4321" in process.stdout and "make detector" in process.stdout
