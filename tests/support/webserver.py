"""A small programmable web server on 127.0.0.1 for tests (HTTP, or HTTPS with a private CA).

Each path is given one or more canned responses (status, headers, body, delays, missing or
false Content-Length); successive requests get them in order and the last one repeats, so
"500 then 200" is ``server.add("/a.jpg", Response(status=500), Response(body=jpeg))``.
Every request is counted per path (query string excluded). Unknown paths answer 404.

As a context manager::

    with WebServer() as server:
        url = server.serve("/cat.jpg", jpeg_bytes, "image/jpeg")
        ...
        assert server.count("/cat.jpg") == 1

As pytest fixtures: import ``web_server`` / ``https_server`` into a test module (or a
conftest). ``https_server.ca_file`` is the CA to trust (``REQUESTS_CA_BUNDLE``).
``search_results_page`` renders a page that google_images_download's scraper reads the way
it reads Google's results, for end-to-end tests of the google backend.
"""

from __future__ import annotations

import html
import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.tls import TLSFiles, make_tls_files


@dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str | None = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the status line is sent
    chunk_size: int = 16 * 1024
    chunk_delay: float = 0.0  # seconds between body chunks: a slow trickle
    send_length: bool = True  # False: no Content-Length, the body ends when the connection closes
    declared_length: int | None = None  # a Content-Length other than the body's real size


def redirect_to(location: str, status: int = 302) -> Response:
    return Response(status=status, content_type=None, headers={"Location": location})


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: simple and close-delimited

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def log_message(self, format: str, *args: object) -> None:
        pass  # tests read counts, not logs

    def _answer(self, send_body: bool) -> None:
        response = self.server.owner.next_response(self.command, self.path)
        if response.delay:
            time.sleep(response.delay)
        self.send_response(response.status)
        if response.content_type:
            self.send_header("Content-Type", response.content_type)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.send_length:
            length = (
                len(response.body) if response.declared_length is None else response.declared_length
            )
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if send_body:
            self._send_body(response)

    def _send_body(self, response: Response) -> None:
        body = response.body
        for start in range(0, len(body), response.chunk_size):
            if response.chunk_delay and start:
                time.sleep(response.chunk_delay)
            self.wfile.write(body[start : start + response.chunk_size])
            self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler sleeping in a 'slow' response must not delay stop()

    def __init__(self, owner: WebServer, tls: ssl.SSLContext | None):
        self.owner = owner
        self.tls = tls
        super().__init__((owner.host, 0), _Handler)

    def finish_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        # The TLS handshake runs here, in the connection's own thread, so a client that
        # never completes it cannot stall the accept loop.
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        pass  # clients hanging up mid-response (timeouts, byte caps) are the point of many tests


class WebServer:
    def __init__(self, tls: TLSFiles | None = None, host: str = "127.0.0.1"):
        self.host = host
        self.tls_files = tls
        self._routes: dict[str, list[Response]] = {}
        self._served: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -----------------------------------------------------------------------
    def start(self) -> WebServer:
        context = None
        if self.tls_files is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls_files.cert_file, self.tls_files.key_file)
        self._server = _Server(self, context)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # addresses -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "start the server first"
        return self._server.server_address[1]

    @property
    def scheme(self) -> str:
        return "https" if self.tls_files else "http"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def ca_file(self) -> Path | None:
        return self.tls_files.ca_file if self.tls_files else None

    # routes --------------------------------------------------------------------------
    def add(self, path: str, *responses: Response) -> str:
        """Serve ``responses`` in order at ``path`` (the last repeats); returns its URL."""
        if not responses:
            raise ValueError("give at least one response")
        with self._lock:
            self._routes[path] = list(responses)
            self._served[path] = 0
        return self.url(path)

    def serve(
        self,
        path: str,
        body: bytes | str,
        content_type: str = "application/octet-stream",
        **options: object,
    ) -> str:
        data = body.encode("utf-8") if isinstance(body, str) else body
        return self.add(path, Response(body=data, content_type=content_type, **options))  # type: ignore[arg-type]

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        return self.add(path, redirect_to(location, status))

    def next_response(self, method: str, raw_path: str) -> Response:
        path = urlsplit(raw_path).path
        with self._lock:
            self._counts[path] += 1
            key = raw_path if raw_path in self._routes else path
            responses = self._routes.get(key)
            if not responses:
                return Response(status=404, body=b"not found", content_type="text/plain")
            index = min(self._served[key], len(responses) - 1)
            self._served[key] += 1
            return responses[index]

    # observations --------------------------------------------------------------------
    def count(self, path: str) -> int:
        with self._lock:
            return self._counts[path]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()


def search_results_page(image_urls: Sequence[str], title: str = "results") -> str:
    """An HTML page listing ``image_urls`` the way Google's result pages embed them
    (``["https://...jpg",h,w]`` inside a script), which is what google_images_download's
    scraper looks for. Its pattern only matches https URLs ending in an image extension."""
    data = json.dumps([[url, 480, 640] for url in image_urls])
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body style='height:4000px'>"
        f"<script>var AF_data = {data};</script><p>{len(image_urls)} results</p></body></html>"
    )


@pytest.fixture
def web_server() -> Iterator[WebServer]:
    with WebServer() as server:
        yield server


@pytest.fixture
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    with WebServer(tls=make_tls_files(tmp_path_factory.mktemp("tls"))) as server:
        yield server
