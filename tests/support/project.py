"""A throw-away copy of the project in a temporary git repository, for real `dvc repro` runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CODE = ("anime_face_id", "flows", "tasks", "tracking")
FILES = ("dvc.yaml", "params.yaml", "pyproject.toml", "data/review/decisions.csv")


@dataclass
class Project:
    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def params_path(self) -> Path:
        return self.root / "params.yaml"

    def params(self) -> dict:
        return yaml.safe_load(self.params_path.read_text())

    def set_params(self, **sections: object) -> None:
        """Replace whole sections (e.g. characters=[...]) or update keys of mapping sections."""
        data = self.params()
        for name, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(name), dict):
                data[name].update(value)
            else:
                data[name] = value
        self.params_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))

    def run(
        self, *args: str, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess:
        process = subprocess.run(
            list(args), cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and process.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({process.returncode}):\n"
                f"--- stdout ---\n{process.stdout[-6000:]}\n--- stderr ---\n{process.stderr[-6000:]}"
            )
        return process

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(str(Path(sys.executable).parent / "dvc"), *args, check=check)


def make_project(where: Path, extra_env: dict[str, str] | None = None) -> Project:
    """Copy the code, dvc.yaml and params.yaml into a fresh git + DVC repository."""
    root = where / "project"
    root.mkdir(parents=True)
    for name in CODE:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(root),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
        **(extra_env or {}),
    }
    project = Project(root, env)
    project.run("git", "init", "-q")
    project.dvc("init", "-q")
    project.dvc("config", "core.analytics", "false")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "initial")
    return project


def prefect_post(api_url: str, path: str, body: dict, attempts: int = 5) -> list[dict]:
    """POST to the Prefect API. A 503 (the server's database busy, as under two test
    workers' load) is answered again after a pause, as Prefect's own client does."""
    for attempt in range(attempts):
        request = urllib.request.Request(
            f"{api_url}/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code != 503 or attempt == attempts - 1:
                raise
            time.sleep(2**attempt)
    raise AssertionError("unreachable")
