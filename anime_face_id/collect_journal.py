"""The journal of a character's collection: ``data/raw/<slug>/_journal.jsonl``, one JSON
line per candidate whose outcome is known (an image with its hash and size, or a reject
reason). It is appended as work finishes, so a run killed at any point resumes without
fetching those candidates again; a torn last line is ignored. Entries remember the
downloader policy they were made under and are only reused under the same one. URLs are
kept without their secrets (``redact_credentials``); entries are keyed on ``candidate_key``,
a digest of the full URL, because two URLs differing only in a secret (?token=A and
?token=B) redact alike yet are different pictures. An entry without that key (a journal
from before it) is dropped on opening: its candidate is simply fetched again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from anime_face_id.fileio import atomic_write_text
from anime_face_id.redaction import redact_credentials

JOURNAL = "_journal.jsonl"


def candidate_key(candidate: str) -> str:
    """The journal key of ``candidate``: sha256 of its exact text, secrets included, so
    that URLs differing only in a secret stay apart while no secret is written down."""
    return hashlib.sha256(candidate.encode("utf-8", "surrogatepass")).hexdigest()


def read_journal(path: Path) -> tuple[dict[str, dict], bool]:
    """Entries by candidate key (the last one wins) and whether unreadable lines were
    found (a line torn by a kill, garbage, or an entry without a key)."""
    entries: dict[str, dict] = {}
    damaged = False
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return entries, False
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if _well_formed(entry):
            entries[entry["key"]] = entry
        else:
            damaged = True
    return entries, damaged or (bool(text) and not text.endswith("\n"))


_ENTRY_KEYS = {
    "image": ("key", "url", "time", "sha256", "ext", "format", "phash", "width", "height"),
    "rejected": ("key", "url", "time", "reason"),
}


def _well_formed(entry: object) -> bool:
    if not isinstance(entry, dict) or entry.get("status") not in _ENTRY_KEYS:
        return False
    return (
        isinstance(entry.get("url"), str)
        and isinstance(entry.get("key"), str)
        and all(key in entry for key in _ENTRY_KEYS[entry["status"]])
    )


class Journal:
    """Append-only record of finished candidates; one ``write`` per line, so a kill
    leaves at worst one torn last line, which ``open`` repairs."""

    def __init__(self, path: Path):
        self.path = path
        read, damaged = read_journal(path)
        # Journals written before a secret was redacted are cleaned the first time they are
        # opened again, so no old file keeps a password or a token.
        self.entries = {}
        for entry in read.values():
            clean = _redacted_entry(entry)
            self.entries[clean["key"]] = clean
        if damaged or list(self.entries.values()) != list(read.values()):
            lines = "".join(
                json.dumps(entry, sort_keys=True) + "\n" for entry in self.entries.values()
            )
            atomic_write_text(path, lines)
        self._handle = path.open("a", encoding="utf-8")

    def append(self, entry: dict) -> None:
        self._handle.write(json.dumps(entry, sort_keys=True) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.entries[entry["key"]] = entry

    def close(self) -> None:
        self._handle.close()


def _redacted_entry(entry: dict) -> dict:
    clean = {**entry, "url": redact_credentials(entry["url"])}
    if isinstance(entry.get("reason"), str):
        clean["reason"] = redact_credentials(entry["reason"])
    return clean
