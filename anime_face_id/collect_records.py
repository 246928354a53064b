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
from functools import cached_property
from pathlib import Path

from anime_face_id import layout
from anime_face_id.config import Character, CollectConfig
from anime_face_id.layout import RAW_DIR
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
    return layout.character_dir(root, RAW_DIR, slug)


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


def read_json_object(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Collection:
    """One character's collection under the current settings: where it lives, what it is
    keyed on (computed once) and whether it is already complete. Every step of collecting
    a character takes one of these."""

    root: Path
    character: Character
    slug: str
    config: CollectConfig

    @property
    def directory(self) -> Path:
        return character_dir(self.root, self.slug)

    @cached_property
    def fingerprint(self) -> dict[str, object]:
        """What was asked: backend, query, limit, source and download policy."""
        config, character = self.config, self.character
        fingerprint: dict[str, object] = {
            "backend": config.backend,
            "query": character.search_query,
            "limit": config.limit,
            "policy": policy_digest(config),
        }
        if config.backend == "google":
            fingerprint["search_url"] = config.search_url
        elif config.backend in ("folder", "urls"):
            source = folder_source if config.backend == "folder" else urls_source
            fingerprint["source"] = config.folder if config.backend == "folder" else config.urls
            fingerprint["listing"] = source.listing_digest(character, self.slug, config, self.root)
        elif config.backend == "booru":
            fingerprint["query"] = character.booru_tag  # the name no longer matters, the tag does
            fingerprint["source"] = config.booru_url
            fingerprint["filters"] = [config.booru_tags, config.booru_ratings, config.booru_file]
        return fingerprint

    def done_record(self) -> dict | None:
        """The completed collection for the current settings, if there is one."""
        done = read_json_object(self.directory / DONE)
        if done is None or done.get("fingerprint") != self.fingerprint:
            return None
        return done if _well_formed(done) else None  # a damaged record: collect again

    def is_collected(self) -> bool:
        done = self.done_record()
        if done is None:
            return False
        directory = self.directory
        return all((directory / Path(row["path"]).name).is_file() for row in done.get("kept", []))

    def result(
        self, candidates: int, kept: int, rejected: int, fetched: int, skipped: bool = False
    ) -> CharacterCollectResult:
        return CharacterCollectResult(
            self.character.name, self.slug, candidates, kept, rejected, fetched, skipped
        )

    def skipped_result(self) -> CharacterCollectResult:
        done = self.done_record() or {}
        return self.result(
            int(done.get("candidates", 0)),
            len(done.get("kept", [])),
            len(done.get("rejected", [])),
            0,
            skipped=True,
        )


def _well_formed(done: dict) -> bool:
    """A completion record with the shape its readers rely on (it may be hand-edited)."""
    kept, rejected = done.get("kept", []), done.get("rejected", [])
    if not isinstance(kept, list) or not isinstance(rejected, list):
        return False
    texts = [(row, ("path", "url")) for row in kept]
    texts += [(row, ("slug", "url_or_path", "reason")) for row in rejected]
    for row, keys in texts:
        if not isinstance(row, dict) or not all(isinstance(row.get(key), str) for key in keys):
            return False
    candidates = done.get("candidates", 0)
    return isinstance(candidates, int) and not isinstance(candidates, bool)


def is_collected(root: Path, character: Character, slug: str, config: CollectConfig) -> bool:
    return Collection(Path(root), character, slug, config).is_collected()
