"""Danbooru-compatible tag boards (Danbooru, Safebooru and their mirrors) through their
JSON API: a character's pictures are the posts carrying its character tag.

A name search on the web returns figurines, cosplay and other characters; a board's
exact character tag (``kuroko_tetsuya``) with ``solo`` returns drawings of that one
character. The backend only lists file URLs, in the board's order (newest first), and
what the board knows of each post (id, artist, tags) for the raw manifest; the project's
downloader fetches the files. Posts that offer no usable file (deleted, restricted to
members, a video, another rating) are recorded as rejects with their reason.

API requests are spaced by ``collect.booru_requests_per_s``, carry a descriptive
User-Agent, and go through the project's downloader (address policy, deadline, byte
cap, retries; a 429 waits as long as its Retry-After asks).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from anime_face_id import __version__
from anime_face_id.config import Character, CollectConfig
from anime_face_id.download import Downloader, FetchRejected
from anime_face_id.errors import EngineRefused
from anime_face_id.sources.base import Found, SearchError, wanted_count

API_USER_AGENT = (
    f"anime-face-id/{__version__} (face-recognition dataset builder; one request at a time)"
)
PICTURE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "webp", "avif"})
CHARACTER_CATEGORY = 4  # Danbooru's tag category for characters
HINTS = 5


class BoardRefused(SearchError):
    """The board answered a request with an error; ``reason`` is the downloader's."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class BooruClient:
    """GET the board's JSON endpoints, one request at a time, at most ``rate`` per second."""

    def __init__(
        self,
        config: CollectConfig,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base = config.booru_url.rstrip("/")
        self.interval = 1.0 / config.booru_requests_per_s
        self.downloader = Downloader(config, sleep=sleep, user_agent=API_USER_AGENT)
        self._clock = clock
        self._sleep = sleep
        self._last: float | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> BooruClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.downloader.close()

    def get(self, endpoint: str, params: dict[str, object]) -> object:
        url = f"{self.base}/{endpoint}?{urlencode(params)}"
        with self._lock:
            if self._last is not None:
                wait = self._last + self.interval - self._clock()
                if wait > 0:
                    self._sleep(wait)
            try:
                body = self.downloader.fetch(url)
            except FetchRejected as rejected:
                if rejected.reason.startswith("http 429"):  # after the downloader's retries
                    raise EngineRefused(
                        f"booru: {url} refused: the board kept answering HTTP 429 Too Many "
                        f"Requests ({rejected.reason}; collect.booru_requests_per_s?)"
                    ) from None
                raise BoardRefused(f"booru: {url}: {rejected.reason}", rejected.reason) from None
            finally:
                self._last = self._clock()
        try:
            return json.loads(body)
        except (ValueError, RecursionError):  # nesting deep enough to exhaust the stack
            raise SearchError(f"booru: {url}: the answer is not usable JSON") from None

    def posts(self, tags: str, page: int, limit: int) -> list[dict]:
        try:
            answer = self.get("posts.json", {"tags": tags, "page": page, "limit": limit})
        except BoardRefused as error:
            if error.reason != "http 422":
                raise
            # Danbooru answers 422 to a search over its tag limit (2 without an account)
            raise SearchError(
                f"booru: the board refused the search {tags!r} (http 422): too many tags? "
                "Danbooru allows 2 without an account: the character's tag and one of "
                "collect.booru_tags"
            ) from None
        if isinstance(answer, dict) and ("success" in answer or "message" in answer):
            # Danbooru reports a refused search (e.g. too many tags) as a JSON object
            message = answer.get("message") or answer.get("reason") or "refused"
            raise SearchError(f"booru: the board refused the search {tags!r}: {message}")
        if not isinstance(answer, list):
            raise SearchError(f"booru: posts.json answered {type(answer).__name__}, not a list")
        return [post for post in answer if isinstance(post, dict)]

    def similar_tags(self, tag: str) -> list[tuple[str, int]]:
        """Character tags like ``tag`` (its words in either order), commonest first; []
        when the board offers no tag search."""
        words = [word for word in tag.split("_") if word]
        patterns = {f"*{'*'.join(words)}*", f"*{'*'.join(reversed(words))}*"}
        found: dict[str, int] = {}
        for pattern in sorted(patterns):
            try:
                answer = self.get(
                    "tags.json",
                    {
                        "search[name_matches]": pattern,
                        "search[category]": CHARACTER_CATEGORY,
                        "search[order]": "count",
                        "limit": HINTS,
                    },
                )
            except SearchError:
                return []
            for entry in answer if isinstance(answer, list) else []:
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    count = entry.get("post_count")
                    found[entry["name"]] = count if isinstance(count, int) else 0
        return sorted(found.items(), key=lambda item: (-item[1], item[0]))[:HINTS]


@dataclass(frozen=True)
class Post:
    """One post as this backend reads it."""

    raw: dict

    @property
    def id(self) -> str:
        return str(self.raw.get("id", "?"))

    def page(self, base: str) -> str:
        return f"{base}/posts/{self.id}"

    def file_url(self, which: str) -> str | None:
        large = self.raw.get("large_file_url") if which == "large" else None
        url = large or self.raw.get("file_url")
        return url if isinstance(url, str) and url else None

    def problem(self, config: CollectConfig) -> str | None:
        """Why this post gives no candidate, or None."""
        if self.raw.get("is_deleted") or self.raw.get("is_banned"):
            return "deleted" if self.raw.get("is_deleted") else "banned"
        rating = self.raw.get("rating")
        if rating not in config.booru_ratings:
            return f"rating {rating!r} not in collect.booru_ratings"
        extension = str(self.raw.get("file_ext") or "").lower()
        if extension and extension not in PICTURE_EXTENSIONS:
            return f"not a picture ({extension})"
        if self.file_url(config.booru_file) is None:
            return "no file URL (restricted to members, or removed)"
        return None

    def details(self) -> dict[str, str]:
        return {
            "post_id": self.id,
            "post_artist": str(self.raw.get("tag_string_artist") or ""),
            "post_tags": str(self.raw.get("tag_string") or ""),
        }


def search_tags(character: Character, config: CollectConfig) -> str:
    return " ".join([character.booru_tag, *config.booru_tags])


def no_posts_error(client: BooruClient, character: Character, config: CollectConfig) -> SearchError:
    tag = character.booru_tag
    message = f"no posts for tag '{tag}'"
    if config.booru_tags:
        message += f" with {' '.join(config.booru_tags)}"
    hints = [(name, count) for name, count in client.similar_tags(tag) if name != tag]
    if hints:
        listed = ", ".join(f"{name} ({count:,} posts)" for name, count in hints)
        message += f"; character tags like it: {listed}. Set it as this character's tag:"
    else:
        message += "; give this character its board tag as tag:"
    return SearchError(f"{message} in params.yaml ({config.booru_url})")


def search(
    character: Character,
    slug: str,
    config: CollectConfig,
    root: Path | None = None,
    client: BooruClient | None = None,
) -> Found:
    wanted = wanted_count(config)
    tags = search_tags(character, config)
    candidates: list[str] = []
    details: dict[str, dict[str, str]] = {}
    skipped: list[tuple[str, str]] = []
    seen_posts = 0
    with client or BooruClient(config) as board:
        for page in range(1, config.booru_max_pages + 1):
            posts = board.posts(tags, page, config.booru_page_size)
            seen_posts += len(posts)
            for post in map(Post, posts):
                if len(candidates) >= wanted:
                    break
                problem = post.problem(config)
                if problem is not None:
                    skipped.append((post.page(board.base), f"post {post.id}: {problem}"))
                    continue
                url = post.file_url(config.booru_file)
                if url in details:
                    continue
                candidates.append(url)
                details[url] = post.details()
            if len(candidates) >= wanted or len(posts) < config.booru_page_size:
                break
        if seen_posts == 0:
            raise no_posts_error(board, character, config)
    return Found(candidates, details, skipped, query=tags)
