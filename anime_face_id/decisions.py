"""The human review decisions: an append-only CSV log that several writers may share.

The review app (possibly several browser sessions, each in its own process) appends rows;
the review stage reads them. Nothing ever rewrites an existing line, so a decision once
written can only be superseded by a later row, and the file doubles as an audit trail.

Reading rules:
- rows count in file order; for each key the LAST valid row wins (file order rather than
  the ``time`` column, because clocks of different writers need not agree);
- the key is the path, except for rows that carry a box: those are keyed by (path, box) so
  one raw image can hold several manual boxes. A ``box`` row adds that box, a ``reject``
  row with the same path and box withdraws it;
- every physical line is one record (writers never put a line break inside a field), so a
  line torn by an interrupted write spoils only itself: it is reported, never fatal;
- a UTF-8 byte order mark (editors on Windows add one) and blank lines before the header
  are ignored, so a file holding nothing else is a log without decisions yet.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from anime_face_id.errors import BadTable
from anime_face_id.layout import DECISION_COLUMNS, DECISIONS_KINDS, UnsafeValue, require_relative

Box = tuple[int, int, int, int]  # x, y, w, h in raw pixels after EXIF orientation
HEADER = ",".join(DECISION_COLUMNS) + "\n"
BOM = "\ufeff"
BOM_BYTES = BOM.encode("utf-8")


class InvalidDecision(ValueError):
    """One decision row is malformed; the message says which field and why."""


@dataclass(frozen=True)
class Decision:
    line: int  # 1-based line number in the file (the header is line 1)
    time: str
    path: str
    decision: str
    character: str
    box: Box | None
    note: str


@dataclass
class Decisions:
    crops: dict[str, Decision] = field(default_factory=dict)  # latest row per crop path
    boxes: dict[tuple[str, Box], Decision] = field(default_factory=dict)  # latest per (path, box)
    invalid: list[str] = field(default_factory=list)  # "decisions.csv line N: reason"
    rows: int = 0  # valid rows read

    def manual_boxes(self) -> list[Decision]:
        """Boxes whose latest row adds them (a later ``reject`` row withdraws a box)."""
        return [row for row in self.boxes.values() if row.decision == "box"]


@dataclass(frozen=True)
class CropStatus:
    """What the log means for one detector crop, read the same way by the review stage and
    the review app."""

    status: str  # pending | accepted | rejected | relabelled
    character: str  # the character the crop counts for now
    ignored: Decision | None = None  # a relabel in force whose character is not listed


def crop_status(decision: Decision | None, name: str, listed: Iterable[str]) -> CropStatus:
    """The status of a crop filed under ``name`` given its latest ``decision``: a relabel to
    its own character is an accept; a relabel to a character not in ``listed`` (params.yaml)
    leaves it pending; so does a box row on a crop's path."""
    if decision is None:
        return CropStatus("pending", name)
    if decision.decision == "accept":
        return CropStatus("accepted", name)
    if decision.decision == "reject":
        return CropStatus("rejected", name)
    if decision.decision != "relabel":
        return CropStatus("pending", name)
    if decision.character not in listed:
        return CropStatus("pending", name, ignored=decision)
    if decision.character == name:
        return CropStatus("accepted", name)
    return CropStatus("relabelled", decision.character)


def unique_paths(rows: Iterable[Mapping[str, str]]) -> list[Mapping[str, str]]:
    """Manifest rows, the first per path: a duplicated row must not count a crop twice."""
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row["path"] not in seen:
            seen.add(row["path"])
            unique.append(row)
    return unique


def parse_box(text: str) -> Box:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 4:
        raise InvalidDecision(f"box {text!r} must be 'x,y,w,h'")
    try:
        x, y, w, h = (int(part) for part in parts)
    except ValueError:
        raise InvalidDecision(f"box {text!r} must hold four whole numbers of pixels") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise InvalidDecision(f"box {text!r} needs x, y >= 0 and a positive width and height")
    return x, y, w, h


def format_box(box: Box) -> str:
    return ",".join(str(value) for value in box)


def _check_path(path: str) -> str:
    # Paths come from a hand-editable file and are later joined to the project root.
    try:
        return require_relative(path)
    except UnsafeValue as error:
        raise InvalidDecision(str(error)) from None


def make_decision(fields: Mapping[str, str], line: int = 0) -> Decision:
    """A validated Decision from one row's fields (keys of DECISION_COLUMNS)."""
    values = {name: (fields.get(name) or "").strip() for name in DECISION_COLUMNS}
    kind = values["decision"]
    if kind not in DECISIONS_KINDS:
        raise InvalidDecision(f"decision {kind!r} is not one of {', '.join(DECISIONS_KINDS)}")
    path = _check_path(values["path"])
    box = parse_box(values["box"]) if values["box"] else None
    if kind == "box" and box is None:
        raise InvalidDecision("a box decision needs a box 'x,y,w,h'")
    if box is not None and kind not in ("box", "reject"):
        raise InvalidDecision(
            f"a {kind} decision cannot carry a box (only box, or reject to withdraw one)"
        )
    if kind == "relabel" and not values["character"]:
        raise InvalidDecision("a relabel decision needs the target character")
    return Decision(line, values["time"], path, kind, values["character"], box, values["note"])


def _single_line(text: str) -> str:
    # One record per physical line is what makes a torn write harmless to its neighbours.
    return " ".join(str(text).splitlines()).strip()


def _encode_row(decision: Decision) -> str:
    row = {
        "time": decision.time,
        "path": decision.path,
        "decision": decision.decision,
        "character": decision.character,
        "box": format_box(decision.box) if decision.box else "",
        "note": decision.note,
    }
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(
        [_single_line(row[name]) for name in DECISION_COLUMNS]
    )
    return buffer.getvalue()


def _field_text(value: object) -> str:
    if isinstance(value, tuple | list):  # a box given as (x, y, w, h)
        return ",".join(str(part) for part in value)
    return _single_line("" if value is None else str(value))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _first_line(text: str) -> str:
    """The header line: the first line that is not blank, after any byte order mark."""
    for line in text.removeprefix(BOM).split("\n"):
        if line.strip():
            return line.rstrip("\r")
    return ""


def _holds_header(fd: int, path: Path) -> bool:
    """Whether the file already starts with the header (False: nothing but a byte order
    mark or blank lines, so the header is still to be written). Another header is an
    error: rows are appended in DECISION_COLUMNS order, so the file must use that order."""
    first = _first_line(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    if not first:
        return False
    try:
        names = [name.strip() for name in _parse_line(first)]
    except InvalidDecision:
        names = []
    if names != list(DECISION_COLUMNS):
        raise BadTable(
            f"{path}: the first line is not the header {HEADER.strip()!r}; refusing to append"
        )
    return True


def _ends_mid_line(fd: int, size: int) -> bool:
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return False
    # A lone byte order mark is no line: the header goes right behind it.
    return os.pread(fd, size, 0) != BOM_BYTES if size == len(BOM_BYTES) else True


def append_decisions(
    path: str | Path,
    rows: Iterable[Mapping[str, object]],
    *,
    unchanged_since: Decisions | None = None,
) -> int:
    """Append decision rows (dicts keyed by DECISION_COLUMNS; ``time`` defaults to now).

    Every row is validated before anything is written, so a bad row from the caller
    leaves the file untouched. Safe with concurrent writers in several processes: an
    exclusive flock on ``<file>.lock`` serialises them and each batch is one O_APPEND
    write followed by fsync. Returns the number of rows appended.

    ``unchanged_since``: the log as the caller read it when it chose the rows (a bulk
    accept of the crops it saw pending). A row whose crop was decided since, by another
    tab or process, is left out; the check reads the log under the same lock as the
    write, so a reviewer's click is never overwritten by a batch planned before it.
    """
    path = Path(path)
    decisions = []
    for row in rows:
        fields = {name: _field_text(row.get(name)) for name in DECISION_COLUMNS}
        fields["time"] = fields["time"] or _now()
        decisions.append(make_decision(fields))
    if not decisions:
        return 0
    body = "".join(_encode_row(decision) for decision in decisions)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the lock file closes
        if unchanged_since is not None:
            decisions = _still_undecided(decisions, unchanged_since, read_decisions(path))
            if not decisions:
                return 0
            body = "".join(_encode_row(decision) for decision in decisions)
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            prefix = "" if size > 0 and _holds_header(fd, path) else HEADER
            if _ends_mid_line(fd, size):
                # A writer killed mid-line left no line end; end that line so ours stand alone.
                prefix = "\n" + prefix
            _write_all(fd, (prefix + body).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_directory(path.parent)
    return len(decisions)


def _still_undecided(rows: list[Decision], before: Decisions, now: Decisions) -> list[Decision]:
    """The rows whose crop's latest decision is the one the caller saw (or none)."""

    def latest_line(log: Decisions, crop: str) -> int | None:
        decision = log.crops.get(crop)
        return decision.line if decision else None

    return [row for row in rows if latest_line(now, row.path) == latest_line(before, row.path)]


def _parse_line(text: str) -> list[str]:
    try:
        return next(csv.reader([text], strict=True))
    except (csv.Error, StopIteration) as error:
        raise InvalidDecision(f"not a CSV row ({error})") from None


def _header_positions(header_line: str, path: Path) -> dict[str, int]:
    try:
        names = [name.strip() for name in _parse_line(header_line)]
    except InvalidDecision as error:
        raise BadTable(f"{path}: the header is {error}") from None
    missing = [name for name in DECISION_COLUMNS if name not in names]
    if missing:
        raise BadTable(
            f"{path}: the header lacks column(s) {', '.join(missing)} (the first line must "
            f"name the columns {HEADER.strip()!r}, in any order)"
        )
    return {name: names.index(name) for name in DECISION_COLUMNS}


def _record(decisions: Decisions, decision: Decision) -> None:
    if decision.box is not None:
        decisions.boxes.pop((decision.path, decision.box), None)  # keep dict order = file order
        decisions.boxes[(decision.path, decision.box)] = decision
    else:
        decisions.crops.pop(decision.path, None)
        decisions.crops[decision.path] = decision


def read_decisions(path: str | Path) -> Decisions:
    """The decisions in force. A missing or empty file (or one holding only a byte order
    mark) means no decisions; invalid rows (a torn last line included) are skipped and
    listed in ``invalid`` with the reason. A file whose header lacks a column is unusable
    as a whole: BadTable (a StageError, and a ValueError)."""
    path = Path(path)
    decisions = Decisions()
    if not path.exists():
        return decisions
    text = path.read_bytes().decode("utf-8", errors="replace").removeprefix(BOM)
    lines = [line.rstrip("\r") for line in text.split("\n")]
    unterminated = lines.pop() if lines else ""  # text after the last line end, if any
    if unterminated.strip():
        lines.append(unterminated)
    header = next((index for index, line in enumerate(lines) if line.strip()), None)
    if header is None:
        return decisions  # empty, or nothing but a byte order mark and blank lines
    positions = _header_positions(lines[header], path)
    width = len(_parse_line(lines[header]))
    for number, line in enumerate(lines[header + 1 :], start=header + 2):
        if not line.strip():
            continue
        torn = number == len(lines) and unterminated.strip() != ""
        try:
            values = _parse_line(line)
            if len(values) != width:
                raise InvalidDecision(f"{len(values)} fields where the header has {width}")
            fields = {name: values[index] for name, index in positions.items()}
            decision = make_decision(fields, line=number)
        except InvalidDecision as error:
            hint = " (the last line has no line end: an interrupted write?)" if torn else ""
            decisions.invalid.append(f"{path.name} line {number}: {error}{hint}; ignored")
            continue
        decisions.rows += 1
        _record(decisions, decision)
    return decisions
