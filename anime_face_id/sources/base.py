"""What every search backend shares: the error type, the call signature, small helpers.

A backend turns a character into an ordered list of candidates (image URLs, or local file
paths for the folder backend). It never downloads anything: the downloader does that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from anime_face_id.config import Character, CollectConfig
from anime_face_id.download import redact_credentials


class SearchError(RuntimeError):
    """The search itself failed (engine unreachable, browser crashed, folder missing).
    The message says what was searched and why it failed; it becomes a reject row and a log
    line, so any URL it quotes loses its credentials here, where it is made."""

    def __init__(self, message: str = ""):
        super().__init__(redact_credentials(str(message)))


class Backend(Protocol):
    def __call__(
        self, character: Character, slug: str, config: CollectConfig, root: Path | None = None
    ) -> list[str]: ...


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
