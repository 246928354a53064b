"""What a character's collection is keyed on, and the records that say it is complete.

Per character, in ``data/raw/<slug>/``:

- ``_done.json``: written last, when a character's collection completed: the fingerprint
  of what was asked (backend, query, limit, source, policy) and the chosen manifest and
  reject rows. A later run with the same fingerprint skips the character without searching.
- ``_search_error.json``: the last failed search, reported as a reject row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from anime_face_id.config import Character, CollectConfig
from anime_face_id.layout import RAW_DIR
from anime_face_id.slugs import is_safe_slug
from anime_face_id.sources import folder as folder_source
from anime_face_id.sources import urls as urls_source

DONE = "_done.json"
SEARCH_ERROR = "_search_error.json"


@dataclass
class CharacterCollectResult:
    character: str
    slug: str
    candidates: int
    kept: int
    rejected: int
    fetched: int  # candidates downloaded (or read) in this run, whatever their outcome
    skipped: bool  # already complete for the same settings: nothing searched or fetched


def character_dir(root: Path, slug: str) -> Path:
    if not is_safe_slug(slug):
        raise ValueError(f"unsafe slug {slug!r}")
    return Path(root) / RAW_DIR / slug


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def policy_digest(config: CollectConfig) -> str:
    """The downloader settings that decide whether a URL gives a usable image; outcomes
    recorded under other settings are not reused."""
    policy = [
        config.max_bytes,
        config.max_pixels,
        config.max_redirects,
        sorted(config.allow_networks),
    ]
    return hashlib.sha256(json.dumps(policy).encode()).hexdigest()[:16]


def collection_fingerprint(
    root: Path, character: Character, slug: str, config: CollectConfig
) -> dict:
    fingerprint: dict[str, object] = {
        "backend": config.backend,
        "query": character.search_query,
        "limit": config.limit,
        "policy": policy_digest(config),
    }
    if config.backend == "google":
        fingerprint["search_url"] = config.search_url
    elif config.backend == "folder":
        fingerprint["source"] = config.folder
        fingerprint["listing"] = folder_source.listing_digest(character, slug, config, root)
    elif config.backend == "urls":
        fingerprint["source"] = config.urls
        fingerprint["listing"] = urls_source.listing_digest(character, slug, config, root)
    elif config.backend == "booru":
        fingerprint["query"] = character.booru_tag  # the name no longer matters, the tag does
        fingerprint["source"] = config.booru_url
        fingerprint["filters"] = [config.booru_tags, config.booru_ratings, config.booru_file]
    return fingerprint


def read_json_object(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def done_record(root: Path, character: Character, slug: str, config: CollectConfig) -> dict | None:
    """The completed collection for the current settings, if there is one."""
    directory = character_dir(root, slug)
    done = read_json_object(directory / DONE)
    if done is None or done.get("fingerprint") != collection_fingerprint(
        root, character, slug, config
    ):
        return None
    return done


def is_collected(root: Path, character: Character, slug: str, config: CollectConfig) -> bool:
    done = done_record(root, character, slug, config)
    if done is None:
        return False
    directory = character_dir(root, slug)
    return all((directory / Path(row["path"]).name).is_file() for row in done.get("kept", []))


def skipped_result(
    root: Path, character: Character, slug: str, config: CollectConfig
) -> CharacterCollectResult:
    done = done_record(root, character, slug, config) or {}
    return CharacterCollectResult(
        character.name,
        slug,
        int(done.get("candidates", 0)),
        len(done.get("kept", [])),
        len(done.get("rejected", [])),
        0,
        True,
    )
