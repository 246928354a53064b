"""The project modules a Python file imports, directly or through other project modules
(static: every ``import`` statement, also those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("anime_face_id", "tasks", "flows", "tracking")


def module_file(repo: Path, dotted: str) -> Path | None:
    parts = dotted.split(".")
    if parts[0] not in PACKAGES:
        return None
    path = repo.joinpath(*parts)
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def imported_names(repo: Path, path: Path) -> set[str]:
    package = list(path.relative_to(repo).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                above = package[: len(package) - node.level + 1]
                base = ".".join([*above, base] if base else above)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_closure(repo: Path, start: Path) -> set[Path]:
    """``start`` and every project file it imports, transitively. Importing ``a.b.c`` runs
    ``a/__init__.py`` and ``a/b/__init__.py`` too, so those count."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(repo, path):
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                found = module_file(repo, ".".join(parts[:end]))
                if found is not None and found not in seen:
                    todo.append(found)
    return seen
