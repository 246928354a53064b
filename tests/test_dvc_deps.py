"""Every DVC stage lists, among its deps, every project module its flow imports (issue 13):
a change to any code a stage runs re-runs that stage, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.imports import import_closure, imported_names

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def dep_paths(stage: dict) -> list[str]:
    return [dep if isinstance(dep, str) else next(iter(dep)) for dep in stage["deps"]]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_depends_on_every_module_its_flow_imports(name: str) -> None:
    deps = dep_paths(STAGES[name])
    modules = import_closure(REPO, REPO / "flows" / f"{name}.py")
    missing = sorted(
        p.relative_to(REPO).as_posix()
        for p in modules
        if not covered(p.relative_to(REPO).as_posix(), deps)
    )
    assert missing == [], f"dvc.yaml stage {name!r} does not list: {missing}"


# Code a stage uses by its path rather than by importing it.
RUN_FROM_FILES = {"package": {"tracking/served_model.py"}}  # MLflow logs the model as this file


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_lists_no_code_it_does_not_run(name: str) -> None:
    deps = dep_paths(STAGES[name])
    modules = {
        p.relative_to(REPO).as_posix() for p in import_closure(REPO, REPO / "flows" / f"{name}.py")
    } | RUN_FROM_FILES.get(name, set())
    code = [
        dep
        for dep in deps
        if dep.endswith(".py") or dep.startswith(("anime_face_id", "tasks", "tracking"))
    ]
    unused = [
        dep
        for dep in code
        if not any(m == dep or m.startswith(dep.rstrip("/") + "/") for m in modules)
    ]
    assert unused == [], f"dvc.yaml stage {name!r} lists code its flow never imports: {unused}"


def test_the_closure_follows_imports_inside_functions_and_packages(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "anime_face_id" / "sub").mkdir(parents=True)
    for name in ("anime_face_id/__init__.py", "anime_face_id/sub/__init__.py", "flows/__init__.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "anime_face_id" / "sub" / "deep.py").write_text("from . import sibling\n")
    (tmp_path / "anime_face_id" / "sub" / "sibling.py").write_text("import json\n")
    (tmp_path / "anime_face_id" / "alone.py").write_text("")
    (tmp_path / "flows" / "x.py").write_text(
        "def run():\n    from anime_face_id.sub.deep import thing\n"
    )
    found = {
        p.relative_to(tmp_path).as_posix()
        for p in import_closure(tmp_path, tmp_path / "flows" / "x.py")
    }
    assert found == {
        "flows/x.py",
        "anime_face_id/__init__.py",
        "anime_face_id/sub/__init__.py",
        "anime_face_id/sub/deep.py",
        "anime_face_id/sub/sibling.py",
    }
    assert "anime_face_id.sub.sibling" in imported_names(
        tmp_path, tmp_path / "anime_face_id" / "sub" / "deep.py"
    )
