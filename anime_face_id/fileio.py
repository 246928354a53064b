"""Atomic file writes and CSV tables.

Every output is written to a temporary file in the destination directory and renamed
into place, so a crash or kill -9 leaves either the old file or the new one, never half
of one. Temporary files carry a recognisable prefix so that a resumed run can sweep up
what an interrupted one left behind.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

TMP_PREFIX = ".tmp-"


class UnreadableFile(ValueError):
    """A path that is not a regular file we may read whole; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_FILE_KINDS = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def read_regular_file(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, or UnreadableFile.

    Opened without blocking (a FIFO would wait for a writer for ever) and checked on the
    open descriptor, so a symlink to /dev/zero or a pipe is refused, and at most
    ``max_bytes`` + 1 bytes are ever read even if the file grows meanwhile.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise UnreadableFile("file not found") from None
    except OSError as error:
        raise UnreadableFile(error.strerror or str(error)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "an unknown kind of file")
            raise UnreadableFile(f"not a regular file: {kind}")
        if info.st_size > max_bytes:
            raise UnreadableFile(f"too large: {info.st_size} bytes (the limit is {max_bytes})")
        data = _read_at_most(fd, max_bytes + 1)
    except OSError as error:
        raise UnreadableFile(error.strerror or str(error)) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UnreadableFile(f"too large: over {max_bytes} bytes (the limit)")
    return data


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks, total = [], 0
    while total < limit:
        chunk = os.read(fd, min(1 << 20, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _process_umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it: done once, before any thread
    os.umask(mask)
    return mask


_UMASK = _process_umask()


def _mode_for(path: Path) -> int:
    """The mode ``open(path, "w")`` would give: an existing file's, else 0666 less the
    umask. mkstemp's temporaries are 0600, which would hide every output from the other
    users of a shared project (and from a service account serving the model)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_UMASK


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _mode_for(path))
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(value: object) -> object:
    """NaN and infinities become null: JSON has no NaN, and DVC/MLflow readers choke on it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def atomic_write_json(path: str | Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def csv_text(fieldnames: Sequence[str], rows: Iterable[Mapping[str, object]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in fieldnames})
    return buffer.getvalue()


def write_csv(
    path: str | Path, fieldnames: Sequence[str], rows: Iterable[Mapping[str, object]]
) -> None:
    atomic_write_text(path, csv_text(fieldnames, rows))


def read_csv(path: str | Path, required: Sequence[str] = ()) -> list[dict[str, str]]:
    """Rows of a CSV with a header; a missing required column is a clear error.

    Hand edits are expected: a byte order mark (Windows editors add one) is skipped, and
    the missing cells of a short row are empty strings, which the stages' row checks
    refuse by name, rather than None, which nothing expects. A row csv cannot parse (a
    cell over its field limit) is a csv.Error naming the file and the line."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, restval="")
        try:
            missing = [name for name in required if name not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
            return [dict(row) for row in reader]
        except csv.Error as error:
            # csv names neither file nor line; DictReader.line_num lags at the last good row
            raise csv.Error(f"{path}: line {reader.reader.line_num}: {error}") from None


def group_by(rows: Iterable[Mapping[str, str]], key: str) -> dict[str, list]:
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return groups


def sweep_temporaries(directory: str | Path, recursive: bool = True) -> int:
    """Remove temporary files an interrupted run left under ``directory`` (or, not
    ``recursive``, directly in it)."""
    removed = 0
    root = Path(directory)
    if root.is_dir():
        found = root.rglob if recursive else root.glob
        for leftover in found(f"{TMP_PREFIX}*"):
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
                removed += 1
    return removed
