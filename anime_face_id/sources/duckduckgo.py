"""DuckDuckGo image search through the ``ddgs`` package.

The client is injectable so the adapter logic (result shapes, limits, error wrapping) can
be tested without the network; by default a real ``ddgs.DDGS`` is created per search.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from anime_face_id.config import Character, CollectConfig
from anime_face_id.sources.base import SearchError, is_web_url, unique, wanted_count


class ImageSearchClient(Protocol):
    def images(self, query: str, **kwargs: Any) -> list[dict[str, Any]]: ...


def default_client(config: CollectConfig) -> ImageSearchClient:
    from ddgs import DDGS  # imported late: only this backend needs it

    # ddgs' timeout applies to each of its HTTP requests, like our download timeout
    return DDGS(timeout=max(1, round(config.timeout_s)))


def make_search(
    client_factory: Callable[[CollectConfig], ImageSearchClient] = default_client,
) -> Callable[..., list[str]]:
    def search(
        character: Character, slug: str, config: CollectConfig, root: Path | None = None
    ) -> list[str]:
        query = character.search_query
        wanted = wanted_count(config)
        try:
            results = client_factory(config).images(query, max_results=wanted)
        except Exception as error:  # ddgs raises its own types plus network errors
            raise SearchError(
                f"duckduckgo search for {query!r} failed: {type(error).__name__}: {error}"
            ) from None
        urls = [str(item.get("image") or "") for item in results or [] if isinstance(item, dict)]
        return unique(url for url in urls if is_web_url(url))[:wanted]

    return search


search = make_search()
