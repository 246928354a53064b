"""The decisions log: concurrent appends, torn lines, latest-wins, validation."""

from __future__ import annotations

import csv
import multiprocessing
from pathlib import Path

import pytest

from anime_face_id.decisions import HEADER, InvalidDecision, append_decisions, read_decisions
from anime_face_id.errors import StageError
from anime_face_id.layout import DECISION_COLUMNS

WRITERS = 4
ROWS_PER_WRITER = 200


def _writer(path: str, writer: int, start) -> None:
    start.wait()  # all writers begin together, so their appends really interleave
    for index in range(ROWS_PER_WRITER):
        # A varying, long note makes each write large enough to tear if unserialised.
        note = f"writer {writer}, row {index}, " + "x" * (index * 7 % 900)
        append_decisions(
            path,
            [{"path": f"data/faces/w{writer}/{index:04d}.png", "decision": "accept", "note": note}],
        )


def test_concurrent_appends_from_several_processes_lose_nothing(tmp_path):
    path = tmp_path / "review" / "decisions.csv"  # missing: the writers race to create it
    context = multiprocessing.get_context("fork")
    start = context.Barrier(WRITERS)
    processes = [
        context.Process(target=_writer, args=(str(path), n, start)) for n in range(WRITERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0

    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # the file ends with a line end
    assert lines[0] + "\n" == HEADER
    assert lines.count(lines[0]) == 1  # one header, even though four writers saw no file
    body = lines[1:-1]
    assert len(body) == WRITERS * ROWS_PER_WRITER
    order: dict[str, list[int]] = {}
    for line in body:
        values = next(csv.reader([line], strict=True))
        assert len(values) == len(DECISION_COLUMNS)
        writer, name = values[1].split("/")[-2:]
        order.setdefault(writer, []).append(int(name.split(".")[0]))
    # Each writer's rows are all there, in the order it wrote them.
    assert order == {f"w{n}": list(range(ROWS_PER_WRITER)) for n in range(WRITERS)}

    decisions = read_decisions(path)
    assert decisions.invalid == []
    assert decisions.rows == WRITERS * ROWS_PER_WRITER
    assert len(decisions.crops) == WRITERS * ROWS_PER_WRITER


def test_append_creates_the_file_with_its_header_and_fills_the_time(tmp_path):
    path = tmp_path / "decisions.csv"
    assert append_decisions(path, [{"path": "data/faces/a/1.png", "decision": "reject"}]) == 1
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(DECISION_COLUMNS)
    decision = read_decisions(path).crops["data/faces/a/1.png"]
    assert decision.decision == "reject"
    assert decision.time.startswith("20") and "T" in decision.time
    assert not list(tmp_path.glob(".tmp-*"))


def test_latest_decision_per_path_wins(tmp_path):
    path = tmp_path / "decisions.csv"
    append_decisions(path, [{"path": "data/faces/a/1.png", "decision": "accept"}])
    append_decisions(path, [{"path": "data/faces/a/2.png", "decision": "reject"}])
    append_decisions(
        path, [{"path": "data/faces/a/1.png", "decision": "relabel", "character": "Bob"}]
    )
    # The time column does not decide (writers' clocks may differ): the file order does.
    append_decisions(
        path, [{"time": "1999-01-01T00:00:00", "path": "data/faces/a/2.png", "decision": "accept"}]
    )
    decisions = read_decisions(path)
    assert decisions.crops["data/faces/a/1.png"].decision == "relabel"
    assert decisions.crops["data/faces/a/1.png"].character == "Bob"
    assert decisions.crops["data/faces/a/2.png"].decision == "accept"
    assert decisions.rows == 4


def test_boxes_are_keyed_by_path_and_box_and_can_be_withdrawn(tmp_path):
    path = tmp_path / "decisions.csv"
    raw = "data/raw/alice/abc.png"
    append_decisions(
        path,
        [
            {"path": raw, "decision": "box", "box": "10,20,30,40"},
            {"path": raw, "decision": "box", "box": (50, 60, 30, 30), "character": "Bob"},
            {"path": raw, "decision": "box", "box": "1,2,3,4"},
        ],
    )
    append_decisions(path, [{"path": raw, "decision": "reject", "box": "1,2,3,4"}])
    append_decisions(
        path, [{"path": raw, "decision": "box", "box": "10,20,30,40", "character": "Carol"}]
    )
    boxes = {row.box: row.character for row in read_decisions(path).manual_boxes()}
    assert boxes == {(10, 20, 30, 40): "Carol", (50, 60, 30, 30): "Bob"}
    assert read_decisions(path).crops == {}  # box rows never count as crop decisions


def test_torn_last_line_is_reported_and_the_next_append_stands_alone(tmp_path):
    path = tmp_path / "decisions.csv"
    append_decisions(path, [{"path": "data/faces/a/1.png", "decision": "accept"}])
    with path.open("ab") as handle:  # a writer killed in the middle of its line
        handle.write(b'2024-05-01T10:00:00+00:00,data/raw/a/x.png,box,Alice,"10,2')
    decisions = read_decisions(path)
    assert list(decisions.crops) == ["data/faces/a/1.png"]
    assert decisions.manual_boxes() == []
    assert len(decisions.invalid) == 1
    assert "line 3" in decisions.invalid[0] and "interrupted" in decisions.invalid[0]

    before = path.read_bytes()
    append_decisions(path, [{"path": "data/faces/a/2.png", "decision": "reject"}])
    after = path.read_bytes()
    assert after.startswith(before)  # nothing existing is rewritten
    decisions = read_decisions(path)
    # The open quote of the torn line does not swallow the row appended after it.
    assert decisions.crops["data/faces/a/2.png"].decision == "reject"
    assert len(decisions.invalid) == 1 and "line 3" in decisions.invalid[0]


def test_torn_line_cut_inside_a_field_is_rejected(tmp_path):
    path = tmp_path / "decisions.csv"
    path.write_text(HEADER + "2024-05-01T10:00:00,data/faces/a/1.png,rel", encoding="utf-8")
    decisions = read_decisions(path)
    assert decisions.crops == {}
    assert len(decisions.invalid) == 1 and "interrupted" in decisions.invalid[0]


def test_invalid_rows_are_reported_with_reasons_not_raised(tmp_path):
    path = tmp_path / "decisions.csv"
    rows = [
        "t,data/faces/a/1.png,maybe,,,",
        "t,data/faces/a/2.png,relabel,,,",
        't,data/raw/a/x.png,box,,"10,20,-5,4",',
        't,data/raw/a/x.png,box,,"10,20",',
        "t,../etc/passwd,reject,,,",
        "t,/abs/path.png,reject,,,",
        't,data/faces/a/3.png,accept,,"1,2,3,4",',
        "t,data/faces/a/4.png,accept",
        "t,data/faces/a/5.png,accept,,,",
    ]
    path.write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    decisions = read_decisions(path)
    assert list(decisions.crops) == ["data/faces/a/5.png"]
    assert len(decisions.invalid) == len(rows) - 1
    reasons = "\n".join(decisions.invalid)
    for expected in (
        "'maybe'",
        "target character",
        "positive width",
        "'x,y,w,h'",
        "'..'",
        "cannot carry a box",
        "fields",
    ):
        assert expected in reasons
    assert [int(reason.split("line ")[1].split(":")[0]) for reason in decisions.invalid] == list(
        range(2, 10)
    )


def test_append_refuses_invalid_rows_and_leaves_the_file_untouched(tmp_path):
    path = tmp_path / "decisions.csv"
    append_decisions(path, [{"path": "data/faces/a/1.png", "decision": "accept"}])
    before = path.read_bytes()
    with pytest.raises(InvalidDecision):
        append_decisions(
            path,
            [
                {"path": "data/faces/a/2.png", "decision": "accept"},
                {"path": "data/faces/a/3.png", "decision": "nope"},
            ],
        )
    assert path.read_bytes() == before


def test_append_refuses_a_file_with_another_header(tmp_path):
    path = tmp_path / "decisions.csv"
    path.write_text("path,decision\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header"):
        append_decisions(path, [{"path": "data/faces/a/1.png", "decision": "accept"}])
    assert path.read_text(encoding="utf-8") == "path,decision\n"


def test_notes_with_line_breaks_quotes_and_commas_stay_on_one_line(tmp_path):
    path = tmp_path / "decisions.csv"
    note = 'two faces, "left" one\nis Bob'
    append_decisions(path, [{"path": "data/faces/a/1.png", "decision": "accept", "note": note}])
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2
    assert read_decisions(path).crops["data/faces/a/1.png"].note == 'two faces, "left" one is Bob'


def test_missing_or_empty_file_means_no_decisions(tmp_path):
    assert read_decisions(tmp_path / "absent.csv").rows == 0
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert read_decisions(empty).crops == {}
    append_decisions(empty, [{"path": "data/faces/a/1.png", "decision": "accept"}])
    assert Path(empty).read_text(encoding="utf-8").startswith(HEADER)


def test_columns_are_read_by_header_name_and_crlf_is_tolerated(tmp_path):
    path = tmp_path / "decisions.csv"
    path.write_bytes(
        b"\xef\xbb\xbfdecision,path,time,character,box,note\r\nreject,data/faces/a/1.png,t,,,\r\n"
    )
    decisions = read_decisions(path)
    assert decisions.invalid == []
    assert decisions.crops["data/faces/a/1.png"].decision == "reject"


def test_a_file_holding_only_a_byte_order_mark_means_no_decisions(tmp_path):
    # Editors on Windows save an "empty" CSV as a byte order mark alone.
    for content in (b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n", b"\n\n"):
        path = tmp_path / "decisions.csv"
        path.write_bytes(content)
        decisions = read_decisions(path)
        assert (decisions.rows, decisions.crops, decisions.invalid) == (0, {}, [])
        # The review app can still record decisions there: the header goes in first.
        append_decisions(path, [{"path": "data/faces/a/1.png", "decision": "accept"}])
        append_decisions(path, [{"path": "data/faces/a/2.png", "decision": "reject"}])
        decisions = read_decisions(path)
        assert decisions.invalid == []
        assert {p: d.decision for p, d in decisions.crops.items()} == {
            "data/faces/a/1.png": "accept",
            "data/faces/a/2.png": "reject",
        }
        assert path.read_bytes().count(HEADER.encode()) == 1
        path.unlink()


def test_byte_order_mark_and_blank_lines_before_the_header_are_skipped(tmp_path):
    path = tmp_path / "decisions.csv"
    path.write_bytes(
        b"\xef\xbb\xbf\r\n\r\n"
        b'"time","path","decision","character","box","note"\r\n'
        b"t,data/faces/a/1.png,reject,,,\r\n"
        b"t,data/faces/a/2.png,maybe,,,\r\n"
    )
    decisions = read_decisions(path)
    assert list(decisions.crops) == ["data/faces/a/1.png"]
    assert decisions.crops["data/faces/a/1.png"].line == 4  # lines as an editor counts them
    assert decisions.invalid and decisions.invalid[0].startswith("decisions.csv line 5:")
    append_decisions(path, [{"path": "data/faces/a/3.png", "decision": "accept"}])
    assert "data/faces/a/3.png" in read_decisions(path).crops


def test_a_header_without_the_columns_is_a_stage_error_naming_the_file(tmp_path):
    path = tmp_path / "decisions.csv"
    path.write_text("when,path,decision\nt,data/faces/a/1.png,accept\n", encoding="utf-8")
    with pytest.raises(StageError, match="header lacks column") as caught:
        read_decisions(path)
    assert str(path) in str(caught.value) and "time, character, box, note" in str(caught.value)
    assert isinstance(caught.value, ValueError)  # what the review app catches
