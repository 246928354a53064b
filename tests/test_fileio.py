"""Atomic writes: a reader sees the old file or the new one, never half of one, and the new
file gets the permissions a plain write would have given it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from anime_face_id.fileio import TMP_PREFIX, atomic_write_bytes, atomic_write_text


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_new_file_is_readable_as_the_umask_allows_not_owner_only(tmp_path: Path) -> None:
    """mkstemp makes its temporary 0600; the gallery, the checkpoint and every table must
    still be readable by a teammate or a service account serving the model."""
    path = tmp_path / "models" / "gallery.npz"
    atomic_write_bytes(path, b"data")
    assert path.read_bytes() == b"data"
    assert mode(path) == 0o666 & ~current_umask()


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("old")
    with pytest.raises(TypeError):  # the write fails half-way: str to a binary file
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]
