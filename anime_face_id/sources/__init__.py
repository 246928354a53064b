"""Search backends: each turns a character into an ordered list of candidate URLs (or,
for ``folder``, local file paths). See ``base.Backend`` for the call signature."""

from __future__ import annotations

from anime_face_id.config import CollectConfig
from anime_face_id.sources.base import Backend, Found, SearchError

__all__ = ["Backend", "Found", "SearchError", "get_backend"]


def get_backend(config: CollectConfig) -> Backend:
    """The search function for ``config.backend``; imported on demand so that, say, the
    folder backend works where selenium or ddgs are broken."""
    if config.backend == "google":
        from anime_face_id.sources.google import search
    elif config.backend == "duckduckgo":
        from anime_face_id.sources.duckduckgo import search
    elif config.backend == "booru":
        from anime_face_id.sources.booru import search
    elif config.backend == "folder":
        from anime_face_id.sources.folder import search
    elif config.backend == "urls":
        from anime_face_id.sources.urls import search
    else:
        raise ValueError(f"unknown collect backend {config.backend!r}")
    return search
