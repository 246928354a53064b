"""A CSV of image URLs (columns ``character,url``), for lists gathered some other way.

A row belongs to a character when its ``character`` cell is the exact name or the slug.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from anime_face_id.config import Character, CollectConfig
from anime_face_id.fileio import read_csv
from anime_face_id.sources.base import SearchError, resolve_source, unique

COLUMNS = ("character", "url")


def urls_for(character: Character, slug: str, csv_path: Path) -> list[str]:
    try:
        rows = read_csv(csv_path, required=COLUMNS)
    except FileNotFoundError:
        raise SearchError(f"urls backend: {csv_path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as error:
        reason = str(error).removeprefix(f"{csv_path}: ")  # read_csv names the file too
        raise SearchError(f"urls backend: cannot read {csv_path}: {reason}") from None
    names = {character.name, slug}
    return unique(row["url"] or "" for row in rows if (row["character"] or "").strip() in names)


def search(
    character: Character, slug: str, config: CollectConfig, root: Path | None = None
) -> list[str]:
    if not config.urls:
        raise SearchError("urls backend: collect.urls is not set")
    csv_path = resolve_source(config.urls, root)
    found = urls_for(character, slug, csv_path)
    if not found:
        raise SearchError(
            f"urls backend: no row for {character.name!r} (or {slug!r}) in {csv_path}"
        )
    return found


def listing_digest(
    character: Character, slug: str, config: CollectConfig, root: Path | None
) -> str:
    try:
        found = urls_for(character, slug, resolve_source(config.urls or "", root))
    except SearchError as error:
        return f"unavailable: {error}"
    return hashlib.sha256("\n".join(found).encode("utf-8")).hexdigest()
