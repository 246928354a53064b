"""DuckDuckGo image search through the ``ddgs`` package.

The client is injectable so the adapter logic (result shapes, limits, error wrapping) can
be tested without the network; by default a real ``ddgs.DDGS`` is created per search.

ddgs turns every answer but 200 into "No results found." (its engines return None for
any other status), so a DuckDuckGo that refuses this client (it answers 202, 403, 418 or
429 when it takes the searches for a robot's) looks like a character with no pictures.
When a search finds nothing, its two requests (the start page, then the results) are
made once more, as ddgs makes them, and a refusing status stops the collection
(EngineRefused).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin

from anime_face_id.config import Character, CollectConfig
from anime_face_id.errors import EngineRefused
from anime_face_id.sources.base import SearchError, is_web_url, unique, wanted_count

# The page ddgs' image search reads its token from, before the search itself.
START_PAGE = "https://duckduckgo.com/"
REFUSING_STATUSES = {
    202: "Accepted",
    403: "Forbidden",
    418: "I'm a teapot",
    429: "Too Many Requests",
}


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
            refuse_if_refused(query, config)
            raise SearchError(
                f"duckduckgo search for {query!r} failed: {type(error).__name__}: {error}"
            ) from None
        urls = [str(item.get("image") or "") for item in results or [] if isinstance(item, dict)]
        found = unique(url for url in urls if is_web_url(url))[:wanted]
        if not found:
            refuse_if_refused(query, config)
        return found

    return search


def refuse_if_refused(query: str, config: CollectConfig) -> None:
    """Raise EngineRefused when DuckDuckGo answers the two requests of ddgs' image search
    for ``query`` (its start page, then ``i.js`` with the page's token) with a refusing
    status; anything else (200, no answer, no token) leaves the search's own outcome."""
    from ddgs.exceptions import DDGSException
    from ddgs.http_client import HttpClient  # the client ddgs uses: same browser disguise

    # the route ddgs takes: its own proxy setting (DDGS_PROXY), as DDGS reads it
    client = HttpClient(proxy=os.environ.get("DDGS_PROXY"), timeout=max(1, round(config.timeout_s)))
    try:
        answer = client.get(START_PAGE, params={"q": query})
        token = re.search(rb"vqd=[\"']?([\d-]+)", answer.content)
        if answer.status_code not in REFUSING_STATUSES and token:
            # the results request as ddgs' DuckduckgoImages.build_payload makes it
            results = {
                "o": "json",
                "q": query,
                "l": "us-en",
                "vqd": token.group(1).decode(),
                "p": "1",
            }
            answer = client.get(urljoin(START_PAGE, "i.js"), params=results)
    except DDGSException:
        return
    if answer.status_code in REFUSING_STATUSES:
        raise EngineRefused(
            f"duckduckgo search for {query!r} refused: DuckDuckGo answered HTTP "
            f"{answer.status_code} {REFUSING_STATUSES[answer.status_code]}, as it does when "
            "it takes searches from this network for a robot's"
        )


search = make_search()
