"""Failures the user can act on: their message says what happened and what to do."""

from __future__ import annotations

from anime_face_id.redaction import redact_credentials


class StageError(RuntimeError):
    """An expected stop of a stage (bad input, pending review, too little data).

    Runners print the message without a traceback and exit non-zero.
    """


class BadTable(StageError, ValueError):
    """A table the stage reads cannot be used: wrong header, not UTF-8, a bad row.

    Also a ValueError, because readers of tables have always raised ValueError for a
    wrong header and callers (the review app) catch that."""


class BadRow(BadTable):
    """One row of a table holds a value that must not be used (e.g. a path leading out
    of the project); the message names the table, the line and the column."""

    def __init__(self, table: str, line: int, field: str, reason: str):
        self.table = table
        self.line = line
        self.field = field
        self.reason = reason
        super().__init__(f"{table} line {line}, column {field}: {reason}")


class SearchError(RuntimeError):
    """The search itself failed (engine unreachable, browser crashed, folder missing).
    The message says what was searched and why it failed; it becomes a reject row and a log
    line, so any URL it quotes loses its credentials here, where it is made."""

    def __init__(self, message: str = ""):
        super().__init__(redact_credentials(str(message)))


class EngineRefused(SearchError):
    """The search engine answered and refused to search at all: a rate limit (HTTP 429),
    a captcha page, a consent wall. It refuses the client, not the query, so every other
    search of the run would be refused the same way: collect stops at the first one
    instead of recording a reject per character, and the search is not retried."""


def utf8_problem(data: bytes) -> str | None:
    """Where ``data`` stops being UTF-8 ('byte 0xff at offset 120, line 4'), or None when
    all of it decodes. Decoding the whole file here gives the offset in the file; a
    decoder reading in chunks reports it within its chunk."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        return f"byte 0x{data[error.start]:02x} at offset {error.start}, line {line}"
    return None
