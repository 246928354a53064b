"""A DVC remote shares the data stages: `dvc push` from one clone, `dvc pull` in a second
clone of the git repository, and the second clone has the same data, byte for byte, and
the same `dvc status` (up to date: nothing to re-run). The remote is a local directory,
which DVC treats like any other remote (S3, SSH: README, "Sharing data")."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support.project import Project, make_project

pytestmark = pytest.mark.slow

CHARACTERS = ["nishikino_maki", "sakurauchi_riko", "takimoto_hifumi"]
SHARED_STAGES = "balance"  # collect, crop, review, split, balance: the data stages


def tree_digest(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_push_then_pull_in_a_second_clone_gives_the_same_data_and_status(
    tmp_path, shared_dir, prefect_api
):
    project = make_project(tmp_path / "first", prefect_api)
    project.set_params(
        characters=[{"name": name} for name in CHARACTERS],
        collect={"backend": "folder", "folder": str(shared_dir / "testdata" / "raw"), "limit": 5},
        crop={"detector": "none", "size": 64},
        review={"require_complete": False},
        split={"val": 0.2, "test": 0.2, "min_per_character": 2},
        balance={"min_per_class": 8},
    )
    project.dvc("repro", SHARED_STAGES)
    remote = tmp_path / "remote"
    project.dvc("remote", "add", "-d", "store", str(remote))
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "data stages and a remote")
    pushed = project.dvc("push")
    assert "pushed" in pushed.stdout
    assert any(remote.rglob("*")), "nothing reached the remote"

    second = Project(tmp_path / "second", project.env)
    project.run("git", "clone", "-q", str(project.root), str(second.root))
    assert not (second.root / "data" / "faces").exists()  # git alone does not carry the data
    second.dvc("pull", "--with-deps", SHARED_STAGES)  # the stages run so far

    data = tree_digest(project.root / "data")
    assert tree_digest(second.root / "data") == data
    assert any(name.startswith("faces/") for name in data)
    # the same status as the first clone (later stages, never run, say so in both) ...
    assert second.dvc("status").stdout == project.dvc("status").stdout
    # ... and the data stages are up to date in both
    for clone in (project, second):
        assert "up to date" in clone.dvc("status", "--with-deps", SHARED_STAGES).stdout
    # nothing to re-run in the second clone either
    again = second.dvc("repro", SHARED_STAGES)
    assert "Running stage" not in again.stdout
