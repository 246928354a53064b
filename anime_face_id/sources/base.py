"""What every search backend shares: the error type, the call signature, small helpers.

A backend turns a character into an ordered list of candidates (image URLs, or local file
paths for the folder backend). It never downloads anything: the downloader does that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from anime_face_id.config import Character, CollectConfig
from anime_face_id.errors import SearchError  # where the backends and their callers find it

__all__ = [
    "Backend",
    "Found",
    "SearchError",
    "as_found",
    "is_web_url",
    "resolve_source",
    "unique",
    "wanted_count",
]


@dataclass(frozen=True)
class Found:
    """What a search found, when it knows more than the URLs: ``details`` holds, per
    candidate, manifest columns (layout.RAW_SOURCE_COLUMNS) describing where it came
    from; ``skipped`` holds (where, reason) for results that offered no usable candidate
    (a deleted post), recorded as rejects; ``query`` is what was searched."""

    candidates: list[str]
    details: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    query: str | None = None


class Backend(Protocol):
    def __call__(
        self, character: Character, slug: str, config: CollectConfig, root: Path | None = None
    ) -> list[str] | Found: ...


def as_found(result: list[str] | Found) -> Found:
    """Any backend's answer as a Found, candidates de-duplicated in order."""
    if isinstance(result, Found):
        candidates = unique(result.candidates)
        return Found(candidates, result.details, list(result.skipped), result.query)
    return Found(unique(result))


def wanted_count(config: CollectConfig) -> int:
    """How many URLs to ask a search engine for (see CollectConfig.search_factor)."""
    return max(config.limit, math.ceil(config.limit * config.search_factor))


def unique(items: Iterable[str]) -> list[str]:
    """Order-preserving de-duplication, dropping blanks."""
    seen: set[str] = set()
    result: list[str] = []
    for item in items:
        item = item.strip()
        if item and item not in seen:
            seen.add(item)
            result.append(item)
    return result


def is_web_url(candidate: str) -> bool:
    return candidate.lower().startswith(("http://", "https://"))


def resolve_source(path: str, root: Path | None) -> Path:
    """A configured folder or CSV path; relative ones are relative to the project root."""
    source = Path(path)
    return source if source.is_absolute() or root is None else Path(root) / source
