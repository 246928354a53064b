"""A Danbooru-compatible board on 127.0.0.1 for tests: ``/posts.json`` (tag search with
``page`` and ``limit``), ``/tags.json`` (``search[name_matches]`` wildcards) and the files.

Posts are dicts in Danbooru's JSON shape; a post matches a search when it carries every
tag of it (character tags included in ``tag_string``, as on Danbooru). Newest first, as
the board orders them. Every request is logged with its time, path, query and
User-Agent; ``rate_limit_once`` answers the next request to an endpoint with a 429.
"""

from __future__ import annotations

import fnmatch
import io
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Request:
    time: float
    path: str
    query: dict[str, str]
    user_agent: str


def picture(seed: int, size: int = 96) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class FakeBooru:
    def __init__(self, max_limit: int = 200, tag_limit: int = 2):
        self.posts: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.tags: dict[str, int] = {}  # character tag -> post count (for tags.json)
        self.requests: list[Request] = []
        self.max_limit = max_limit
        self.tag_limit = tag_limit  # Danbooru's for a visitor without an account
        self._rate_limited: dict[str, str] = {}  # endpoint -> Retry-After
        self._refusing: set[str] = set()  # endpoints answering 429 to every request
        self.hostile: bytes | None = None  # when set, every posts.json answer is this
        self.hostile_tags: bytes | None = None  # and every tags.json answer this
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # content ---------------------------------------------------------------------
    def add_post(self, character: str, **fields: object) -> dict:
        """A solo, general-rated picture of ``character`` (override any field)."""
        post_id = len(self.posts) + 1
        path = f"/data/{character}_{post_id}.png"
        self.files[path] = picture(post_id)
        post = {
            "id": post_id,
            "rating": "g",
            "file_ext": "png",
            "file_url": self.url(path),
            "large_file_url": self.url(path),
            "tag_string": f"{character} solo 1girl artist_{post_id % 3}",
            "tag_string_character": character,
            "tag_string_artist": f"artist_{post_id % 3}",
            "is_deleted": False,
            "is_banned": False,
            **fields,
        }
        self.posts.insert(0, post)  # newest first
        self.tags[character] = self.tags.get(character, 0) + 1
        return post

    # lifecycle -------------------------------------------------------------------
    def __enter__(self) -> FakeBooru:
        board = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                board._answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start the board first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def rate_limit_once(self, endpoint: str, retry_after: str = "1") -> None:
        self._rate_limited[endpoint] = retry_after

    def rate_limit_always(self, endpoint: str) -> None:
        self._refusing.add(endpoint)

    def searches(self, tag: str | None = None) -> list[Request]:
        return [
            r
            for r in self.requests
            if r.path == "/posts.json" and (tag is None or tag in r.query["tags"].split())
        ]

    def downloads(self, character: str) -> int:
        return sum(r.path.startswith(f"/data/{character}_") for r in self.requests)

    # answers ---------------------------------------------------------------------
    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        with self._lock:
            self.requests.append(
                Request(time.monotonic(), parts.path, query, handler.headers.get("User-Agent", ""))
            )
            retry_after = self._rate_limited.pop(parts.path, None)
            if parts.path in self._refusing:
                retry_after = "0"
        if retry_after is not None:
            self._send(handler, 429, b'{"message": "slow down"}', {"Retry-After": retry_after})
        elif parts.path == "/posts.json" and self.hostile is not None:
            self._send(handler, 200, self.hostile)
        elif parts.path == "/posts.json" and len(query.get("tags", "").split()) > self.tag_limit:
            refusal = {
                "success": False,
                "message": f"You cannot search for more than {self.tag_limit} tags at a time",
            }
            self._send(handler, 422, json.dumps(refusal).encode())
        elif parts.path == "/posts.json":
            self._send(handler, 200, json.dumps(self._search(query)).encode())
        elif parts.path == "/tags.json" and self.hostile_tags is not None:
            self._send(handler, 200, self.hostile_tags)
        elif parts.path == "/tags.json":
            self._send(handler, 200, json.dumps(self._tag_search(query)).encode())
        elif parts.path in self.files:
            self._send(handler, 200, self.files[parts.path], content_type="image/png")
        else:
            self._send(handler, 404, b"{}")

    def _search(self, query: dict[str, str]) -> list[dict]:
        wanted = set(query.get("tags", "").split())
        limit = min(int(query.get("limit", 20)), self.max_limit)
        page = int(query.get("page", 1))
        matching = [p for p in self.posts if wanted <= set(p["tag_string"].split())]
        return matching[(page - 1) * limit : page * limit]

    def _tag_search(self, query: dict[str, str]) -> list[dict]:
        pattern = query.get("search[name_matches]", "")
        names = [name for name in self.tags if fnmatch.fnmatchcase(name, pattern)]
        names.sort(key=lambda name: -self.tags[name])
        return [{"name": n, "post_count": self.tags[n], "category": 4} for n in names]

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)
