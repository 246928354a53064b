"""The crop stage's per-character cache: ``data/faces/<slug>/_index.json`` maps each source
image's sha256 to the settings fingerprint it was cropped with and what came out (faces, or
the reason there were none). Entries are reused when the fingerprint matches and their
crop files exist; ``checked_index`` and ``index_rows`` turn a character's index into its
manifest and reject rows without detecting anything again."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from anime_face_id import layout
from anime_face_id.fileio import atomic_write_bytes, csv_text, sweep_temporaries

INDEX_NAME = "_index.json"
INDEX_VERSION = 1
SHA256 = re.compile(r"[0-9a-f]{64}")
# <sha256[:16]>_<x>_<y>_<w>_<h>.png (cutting.crop_file_name); <sha256[:16]>_<n>.png before
CROP_FILE = re.compile(r"[0-9a-f]{16}(?:_\d+){4}\.png|[0-9a-f]{16}_\d+\.png")


class CropStateError(RuntimeError):
    """The per-character crop state does not match the raw data it should describe."""


def character_dir(root: Path, slug: str) -> Path:
    return layout.character_dir(root, layout.FACES_DIR, slug)


def read_index(directory: Path) -> dict:
    """The saved index, or an empty one when it is missing, unreadable or outdated
    (everything is then simply cropped again)."""
    try:
        index = json.loads((directory / INDEX_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"images": {}}
    if not isinstance(index, dict) or index.get("version") != INDEX_VERSION:
        return {"images": {}}
    if not isinstance(index.get("images"), dict):
        return {"images": {}}
    return index


def write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write that leaves an identical file untouched (mtime included), so an
    unchanged re-run changes nothing on disk."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(path, data)


def save_index(directory: Path, header: dict, images: dict, invalid: list) -> None:
    index = {
        **header,
        "version": INDEX_VERSION,
        "images": images,
        "invalid": invalid,
    }
    text = json.dumps(index, indent=1, sort_keys=True) + "\n"
    write_if_changed(directory / INDEX_NAME, text.encode("utf-8"))


def reusable(entry: object, fingerprint: str, directory: Path) -> bool:
    if not isinstance(entry, dict) or entry.get("fingerprint") != fingerprint:
        return False
    if not entry.get("cacheable", False):
        return False
    faces = entry.get("faces")
    if not isinstance(faces, list):
        return False
    return all(
        isinstance(face, dict)
        and CROP_FILE.fullmatch(str(face.get("file", "")))
        and (directory / face["file"]).is_file()
        for face in faces
    )


def unique_rows(rows: Iterable[dict]) -> tuple[dict[str, dict], list[dict]]:
    """Rows keyed by sha256 (first one wins for duplicates), and rows whose sha256 is not
    a sha256 (they cannot be named or cached, so they are rejected)."""
    keyed: dict[str, dict] = {}
    invalid: list[dict] = []
    for row in rows:
        sha256 = row.get("sha256", "").lower()
        if not SHA256.fullmatch(sha256):
            invalid.append(
                {
                    "character": row["character"],
                    "source": row["path"],
                    "reason": f"invalid sha256 in the raw manifest: {row.get('sha256', '')!r}",
                }
            )
        else:
            keyed.setdefault(sha256, row)
    return keyed, invalid


def image_count(rows: Iterable[dict]) -> int:
    """How many images ``crop_character`` counts for ``rows`` (duplicates once)."""
    keyed, invalid = unique_rows(rows)
    return len(keyed) + len(invalid)


def remove_unreferenced(directory: Path, entries: dict) -> None:
    referenced = {face["file"] for entry in entries.values() for face in entry["faces"]}
    sweep_temporaries(directory)
    for path in directory.iterdir():
        if path.is_file() and CROP_FILE.fullmatch(path.name) and path.name not in referenced:
            path.unlink(missing_ok=True)


# Face fields stored in the index under the same names as their manifest columns.
FACE_FIELDS = ("x", "y", "w", "h", "crop_x", "crop_y", "crop_side", "score", "phash")


def index_rows(slug: str, index: dict) -> tuple[list[dict], list[dict]]:
    """Manifest and reject rows for one character's index."""
    faces, rejects = [], []
    for sha256, entry in index["images"].items():
        base = {"character": entry["character"], "slug": slug, "source": entry["source"]}
        if entry["reason"] is not None:
            rejects.append({**base, "reason": entry["reason"]})
        for face in entry["faces"]:
            row = {**base, **{key: face[key] for key in FACE_FIELDS}}
            row["path"] = layout.posix(layout.FACES_DIR / slug / face["file"])
            row["source_sha256"] = sha256
            row["detector"] = index.get("detector", "")
            row["source_phash"] = entry["source_phash"]
            faces.append(row)
    rejects.extend({**item, "slug": slug} for item in index.get("invalid", []))
    return faces, rejects


def checked_index(root: Path, slug: str, rows: list[dict]) -> dict:
    """The slug's index, after checking it describes exactly the current raw rows."""
    index = read_index(character_dir(root, slug))
    keyed, invalid = unique_rows(rows)
    where = layout.posix(layout.FACES_DIR / slug / INDEX_NAME)
    if set(index["images"]) != set(keyed) or len(index.get("invalid", [])) != len(invalid):
        raise CropStateError(
            f"{where} does not match the raw manifest for {slug!r}: run crop_character for it"
        )
    fingerprints = {entry.get("fingerprint") for entry in index["images"].values()}
    if len(fingerprints) > 1:
        raise CropStateError(f"{where} mixes crop settings: run crop_character for {slug!r}")
    return index


def prune_characters(root: Path, keep: set[str]) -> None:
    """Remove the crop directories of characters no longer in the raw data; only
    directories this stage made (they hold an index) or empty ones are touched."""
    faces_dir = Path(root) / layout.FACES_DIR
    for path in faces_dir.iterdir():
        if not path.is_dir() or path.is_symlink() or path.name in keep:
            continue
        if (path / INDEX_NAME).is_file() or not any(path.iterdir()):
            shutil.rmtree(path)


def write_table(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    write_if_changed(path, csv_text(columns, rows).encode("utf-8"))


def new_entry(row: dict, fingerprint: str) -> dict:
    return {
        "fingerprint": fingerprint,
        "character": row["character"],
        "source": row["path"],
        "source_phash": row.get("phash", ""),
        "faces": [],
        "reason": None,
        "cacheable": True,
    }


def refreshed_entry(entry: dict, row: dict) -> dict:
    """A reused entry takes the current row's descriptive fields (no pixels involved)."""
    return {
        **entry,
        "character": row["character"],
        "source": row["path"],
        "source_phash": row.get("phash", ""),
    }


def rejected_entry(entry: dict, reason: str, cacheable: bool = True) -> dict:
    # Unreadable files may be a transient problem (a mount, a sync in progress), so they are
    # tried again next run; decoding and detection outcomes are properties of the bytes.
    return {**entry, "faces": [], "reason": reason, "cacheable": cacheable}
