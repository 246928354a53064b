"""The downloader under fault injection, against a real local server.

Every connection attempt this process makes is recorded through an audit hook, and any
attempt to reach an address outside 127.0.0.0/8 is blocked there: if the address guard
ever failed, the test would fail without a single packet leaving the machine.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import gzip
import io
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anime_face_id.collect import DONE, JOURNAL, collect_all, read_journal
from anime_face_id.config import CollectConfig, parse_params
from anime_face_id.download import Downloader, FetchRejected
from anime_face_id.errors import StageError
from anime_face_id.fileio import TMP_PREFIX, read_csv
from anime_face_id.layout import RAW_DIR, RAW_MANIFEST, RAW_REJECTS
from anime_face_id.redaction import redact_credentials
from tests.support.tls import make_tls_files
from tests.support.webserver import Response, WebServer, https_server, web_server

__all__ = ["https_server", "web_server"]  # fixtures used below

REPO = Path(__file__).resolve().parents[1]

# --- connection watch -----------------------------------------------------------------------

_connects: list[str] = []
_guard = {"active": False}


def _audit(event: str, args: tuple) -> None:
    if event != "socket.connect" or not _guard["active"]:
        return
    address = args[1]
    if not isinstance(address, tuple):
        return  # a unix socket
    _connects.append(address[0])
    if not address[0].startswith("127."):
        raise ConnectionRefusedError(f"test guard: blocked connection to {address[0]}")


sys.addaudithook(_audit)  # hooks cannot be removed: it only acts while a test here runs


@pytest.fixture(autouse=True)
def connection_guard() -> Iterator[None]:
    _guard["active"] = True
    try:
        yield
    finally:
        _guard["active"] = False


def connected_hosts(since: int) -> list[str]:
    return _connects[since:]


# --- test images --------------------------------------------------------------------------


def noise(seed: int, size: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(Image.fromarray(noise(seed, size)), "JPEG", quality=90)


def exif_rotated_jpeg() -> bytes:
    """Stored 80 x 40 with orientation 6 (rotate 90°): upright it is 40 x 80."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(noise(7, (80, 40))), "JPEG", exif=exif)


def sixteen_bit_png() -> bytes:
    ramp = (np.arange(50 * 30, dtype=np.uint16).reshape(30, 50) * 40).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height``: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


VALID = {
    "/valid.jpg": (jpeg(1), "image/jpeg", "JPEG", 64, 48),
    "/valid.png": (encode(Image.fromarray(noise(2, (40, 30))), "PNG"), "image/png", "PNG", 40, 30),
    "/valid.gif": (
        encode(Image.fromarray(noise(3, (32, 32))).convert("P"), "GIF"),
        "image/gif",
        "GIF",
        32,
        32,
    ),
    "/valid.webp": (
        encode(Image.fromarray(noise(4, (36, 24))), "WEBP"),
        "image/webp",
        "WEBP",
        36,
        24,
    ),
    "/cmyk.jpg": (
        encode(Image.fromarray(noise(5, (30, 20))).convert("CMYK"), "JPEG"),
        "image/jpeg",
        "JPEG",
        30,
        20,
    ),
    "/sixteen.png": (sixteen_bit_png(), "image/png", "PNG", 50, 30),
    "/rotated.jpg": (exif_rotated_jpeg(), "image/jpeg", "JPEG", 40, 80),
}


def config(**overrides: object) -> CollectConfig:
    settings: dict[str, object] = {
        "backend": "urls",
        "urls": "urls.csv",
        "limit": 50,
        "workers": 4,
        "timeout_s": 0.5,
        "retries": 1,
        "backoff_s": 0.01,
        "max_bytes": 200_000,
        "allow_networks": ["127.0.0.0/8"],
    }
    settings.update(overrides)
    return CollectConfig(**settings)  # type: ignore[arg-type]


# --- the downloader on its own ----------------------------------------------------------------


def fetch_reason(downloader: Downloader, url: str) -> str:
    with pytest.raises(FetchRejected) as rejected:
        downloader.fetch(url)
    return rejected.value.reason


def test_retries_5xx_then_succeeds_but_never_retries_4xx(web_server: WebServer) -> None:
    body = jpeg(10)
    flaky = web_server.add(
        "/flaky.jpg", Response(status=503), Response(body=body, content_type="image/jpeg")
    )
    missing = web_server.add("/missing.jpg", Response(status=404))
    broken = web_server.add("/broken.jpg", Response(status=500))
    with Downloader(config(retries=2)) as downloader:
        assert downloader.fetch(flaky) == body
        assert fetch_reason(downloader, missing) == "http 404"
        assert fetch_reason(downloader, broken) == "http 500 after 2 retries"
    assert web_server.counts() == {"/flaky.jpg": 2, "/missing.jpg": 1, "/broken.jpg": 3}


def test_429_waits_as_long_as_retry_after_asks_then_tries_again(web_server: WebServer) -> None:
    body = jpeg(10)
    limited = web_server.add(
        "/limited.jpg",
        Response(status=429, headers={"Retry-After": "1"}),
        Response(body=body, content_type="image/jpeg"),
    )
    pauses: list[float] = []
    with Downloader(config(retries=2), sleep=pauses.append) as downloader:
        assert downloader.fetch(limited) == body
    assert pauses == [1.0]  # the server's 1 s, not the 0.01 s backoff
    # a wait beyond the deadline is not waited: the reason says so at once
    stuck = web_server.add("/stuck.jpg", Response(status=429, headers={"Retry-After": "3600"}))
    with Downloader(config(retries=2, deadline_s=5), sleep=pauses.append) as downloader:
        reason = fetch_reason(downloader, stuck)
    assert reason == "http 429: the server asked to wait 3600 s, beyond the 5 s deadline"
    # without Retry-After, the usual backoff
    bare = web_server.add("/bare.jpg", Response(status=429))
    with Downloader(config(retries=1), sleep=pauses.append) as downloader:
        assert fetch_reason(downloader, bare) == "http 429 after 1 retries"
    assert pauses[-1] == 0.01


def test_retry_after_reads_seconds_and_http_dates():
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    from anime_face_id.download import retry_after_s

    assert retry_after_s({"Retry-After": "7"}) == 7.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after_s({"Retry-After": later}) <= 30
    assert retry_after_s({}) is None and retry_after_s({"Retry-After": "soon"}) is None


def test_unicode_digits_in_numeric_headers_count_as_absent(web_server: WebServer) -> None:
    """'²'.isdigit() is True but int('²') fails: such a header is ignored, not a crash."""
    from anime_face_id.download import retry_after_s

    assert retry_after_s({"Retry-After": "²"}) is None
    body = jpeg(15)
    limited = web_server.add(
        "/superscript.jpg",
        Response(status=429, headers={"Retry-After": "²"}),
        Response(
            body=body, content_type="image/jpeg", send_length=False, headers={"Content-Length": "²"}
        ),
    )
    pauses: list[float] = []
    with Downloader(config(retries=1), sleep=pauses.append) as downloader:
        assert downloader.fetch(limited) == body
    assert pauses == [0.01]  # the usual backoff, as without Retry-After


def test_slow_responses_time_out_and_are_retried(web_server: WebServer) -> None:
    slow = web_server.add("/slow.jpg", Response(body=jpeg(), delay=1.5))
    trickle = web_server.add(
        "/trickle.jpg", Response(body=b"x" * 10_000, chunk_size=1000, chunk_delay=0.15)
    )
    started = time.monotonic()
    with Downloader(config(retries=1, timeout_s=0.4, deadline_s=3)) as downloader:
        assert fetch_reason(downloader, slow) == "timeout after 1 retries"
    # deadline_s bounds the URL in all, retries included: a body trickled past it is cut
    # and not tried again (it would only be cut again)
    with Downloader(config(retries=1, timeout_s=0.4, deadline_s=0.6)) as downloader:
        trickle_started = time.monotonic()
        assert fetch_reason(downloader, trickle) == "deadline exceeded: 0.6 s"
        assert time.monotonic() - trickle_started < 3 * 0.6
    assert web_server.count("/slow.jpg") == 2 and web_server.count("/trickle.jpg") == 1
    assert time.monotonic() - started < 6


def test_byte_cap_with_and_without_content_length(web_server: WebServer) -> None:
    big = b"\xff\xd8" + b"\0" * 300_000
    declared = web_server.add("/declared.jpg", Response(body=big))
    undeclared = web_server.add("/undeclared.jpg", Response(body=big, send_length=False))
    lying = web_server.add(
        "/lying.jpg", Response(body=big, send_length=False, headers={"Content-Length": "100"})
    )
    gzip_bomb = web_server.add(
        "/zipped.jpg",
        Response(body=gzip.compress(b"\0" * 5_000_000), headers={"Content-Encoding": "gzip"}),
    )
    cut_short = web_server.add("/short.jpg", Response(body=b"\xff\xd8" * 50, declared_length=5000))
    with Downloader(config(max_bytes=200_000)) as downloader:
        for url in (declared, undeclared, gzip_bomb):  # the cap counts decompressed bytes
            assert fetch_reason(downloader, url) == "too large: > 200000 bytes"
        assert len(downloader.fetch(lying)) == 100  # a short body: the decode step rejects it
        assert fetch_reason(downloader, cut_short).startswith("connection failed after 1 retries (")
    assert web_server.count("/short.jpg") == 2


def test_redirects_followed_by_hand(web_server: WebServer) -> None:
    body = jpeg(11)
    web_server.serve("/target.jpg", body, "image/jpeg")
    hop = web_server.redirect("/hop", "/target.jpg", status=301)
    loop = web_server.redirect("/loop-a", "/loop-b")
    web_server.redirect("/loop-b", web_server.url("/loop-a"))
    for index in range(7):
        web_server.redirect(f"/chain{index}", f"/chain{index + 1}")
    with Downloader(config(max_redirects=5)) as downloader:
        assert downloader.fetch(hop) == body
        assert fetch_reason(downloader, loop) == "redirect loop"
        assert (
            fetch_reason(downloader, web_server.url("/chain0"))
            == "too many redirects (more than 5)"
        )
    assert web_server.count("/loop-a") == 1 and web_server.count("/chain5") == 1
    assert web_server.count("/chain6") == 0


def test_redirect_to_private_addresses_is_refused_without_connecting(web_server: WebServer) -> None:
    private = web_server.redirect("/to-private", "http://10.1.2.3/secret.jpg")
    metadata = web_server.redirect("/to-metadata", "http://169.254.169.254/latest/meta-data/")
    mapped = web_server.redirect("/to-mapped", "http://[::ffff:10.9.8.7]/x.jpg")
    since = len(_connects)
    with Downloader(config()) as downloader:
        assert fetch_reason(downloader, private) == "refused private address 10.1.2.3"
        assert fetch_reason(downloader, metadata) == "refused link-local address 169.254.169.254"
        assert fetch_reason(downloader, mapped) == "refused private address ::ffff:a09:807"
    contacted = connected_hosts(since)
    assert contacted and all(host == "127.0.0.1" for host in contacted), contacted


def test_redirect_to_ipv6_transition_and_site_local_addresses_is_refused_without_connecting(
    web_server: WebServer,
) -> None:
    targets = {
        "/to-6to4": ("[2002:a00:1::]", "refused 6to4 address 2002:a00:1:: (embeds 10.0.0.1)"),
        "/to-nat64": (
            "[64:ff9b::a9fe:a9fe]",
            "refused nat64 address 64:ff9b::a9fe:a9fe (embeds 169.254.169.254)",
        ),
        "/to-site-local": ("[fec0::1]", "refused site-local address fec0::1"),
    }
    for path, (host, _reason) in targets.items():
        web_server.redirect(path, f"http://{host}/x.jpg")
    since = len(_connects)
    with Downloader(config()) as downloader:
        for path, (_host, reason) in targets.items():
            assert fetch_reason(downloader, web_server.url(path)) == reason
    assert all(host == "127.0.0.1" for host in connected_hosts(since))


def test_loopback_is_refused_unless_allowed(web_server: WebServer) -> None:
    url = web_server.serve("/here.jpg", jpeg(12), "image/jpeg")
    since = len(_connects)
    with Downloader(config(allow_networks=[])) as downloader:
        assert fetch_reason(downloader, url) == "refused loopback address 127.0.0.1"
        assert fetch_reason(downloader, url.replace("127.0.0.1", "localhost")).startswith(
            "refused loopback address"
        )
    assert connected_hosts(since) == [] and web_server.count("/here.jpg") == 0


def test_only_http_and_https(web_server: WebServer) -> None:
    with Downloader(config()) as downloader:
        assert fetch_reason(downloader, "file:///etc/passwd") == "unsupported URL scheme 'file'"
        assert fetch_reason(downloader, "ftp://127.0.0.1/a.jpg") == "unsupported URL scheme 'ftp'"
        web_server.redirect("/to-file", "file:///etc/passwd")
        assert (
            fetch_reason(downloader, web_server.url("/to-file")) == "unsupported URL scheme 'file'"
        )


def test_https_needs_the_ca_and_honours_requests_ca_bundle(
    https_server: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = jpeg(13)
    url = https_server.serve("/secure.jpg", body, "image/jpeg")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with Downloader(config()) as downloader:
        assert fetch_reason(downloader, url).startswith("tls error")
    with Downloader(config(), verify=str(https_server.ca_file)) as downloader:
        assert downloader.fetch(url) == body
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(https_server.ca_file))
    with Downloader(config()) as downloader:
        assert downloader.fetch(url) == body


# --- the deadline over the whole exchange ----------------------------------------------------


class ScriptedServer:
    """A raw TCP server on 127.0.0.1 for what WebServer cannot do (http.server writes a
    status line and its headers at once): every connection gets ``reply`` sent ``step``
    bytes at a time, ``interval`` seconds apart, or nothing at all when ``silent`` (not
    even a TLS handshake). Requests are recorded; ``stop`` ends and joins every thread."""

    def __init__(
        self,
        reply: bytes = b"",
        interval: float = 0.0,
        step: int = 1,
        silent: bool = False,
        tls: ssl.SSLContext | None = None,
    ):
        self.reply = reply
        self.interval = interval
        self.step = step
        self.silent = silent
        self.tls = tls
        self.requests: list[bytes] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # so the accept loop notices stop()

    def __enter__(self) -> ScriptedServer:
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def url(self, path: str) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self._stopping.set()
        for thread in list(self._threads):
            thread.join(timeout=10)
            assert not thread.is_alive(), "a scripted server thread did not stop"
        self._listener.close()

    def _spawn(self, target, *args: object) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _address = self._listener.accept()
            except TimeoutError:
                continue
            self._spawn(self._answer, connection)

    def _answer(self, connection: socket.socket) -> None:
        try:
            connection.settimeout(5)
            if self.silent:
                self._stopping.wait()
                return
            if self.tls is not None:
                connection = self.tls.wrap_socket(connection, server_side=True)
            request = b""
            while b"\r\n\r\n" not in request:
                received = connection.recv(4096)
                if not received:
                    return
                request += received
            self.requests.append(request)
            for start in range(0, len(self.reply), self.step):
                connection.sendall(self.reply[start : start + self.step])
                if self.interval and self._stopping.wait(self.interval):
                    return
        except OSError:
            pass  # the client hung up: the point of most tests here
        finally:
            connection.close()


def http_reply(body: bytes, content_type: str = "image/jpeg") -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}"
    return (head + "\r\nConnection: close\r\n\r\n").encode() + body


# At one byte per 0.2 s these headers take about 20 s, and the body never comes.
TRICKLED_HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Padding: " + b"a" * 60


def open_sockets_on_port(port: int) -> int:
    """This process's TCP sockets with ``port`` at either end, from Linux's /proc (other
    tests' servers may close theirs meanwhile, so a plain descriptor count would not do)."""
    gc.collect()  # a socket only closed by its finaliser would look like a leak
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed since the listing
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            ends = {int(address.rsplit(":", 1)[1], 16) for address in fields[1:3]}
            found += port in ends and fields[9] in inodes
    return found


@pytest.fixture
def tls_context(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    files = make_tls_files(tmp_path / "tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert_file, files.key_file)
    return context, files.ca_file


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="lists sockets from /proc")
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_deadline_cuts_headers_trickled_one_byte_at_a_time(
    scheme: str, tls_context: tuple[ssl.SSLContext, Path]
) -> None:
    context, ca_file = tls_context
    threads = set(threading.enumerate())
    server = ScriptedServer(
        TRICKLED_HEADERS, interval=0.2, tls=context if scheme == "https" else None
    )
    port = server.port
    # each byte comes well within timeout_s, so only the deadline can end this
    settings = config(retries=2, backoff_s=0.01, timeout_s=1.0, deadline_s=1.5)
    with server, Downloader(settings, verify=str(ca_file)) as downloader:
        started = time.monotonic()
        assert fetch_reason(downloader, server.url("/x.jpg")) == "deadline exceeded: 1.5 s"
        elapsed = time.monotonic() - started
    assert 1.4 < elapsed < 3 * 1.5, elapsed
    assert len(server.requests) == 1  # no retry was started after the deadline
    assert set(threading.enumerate()) <= threads  # the watchdog timer is gone
    assert open_sockets_on_port(port) == 0  # and so is every socket, at both ends


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_deadline_cuts_a_read_longer_than_itself(scheme: str) -> None:
    """A server that accepts and says nothing (on https: never answers the TLS hello),
    with timeout_s above deadline_s: the one blocked read is cut at the deadline."""
    settings = config(retries=3, timeout_s=10, deadline_s=1)
    with ScriptedServer(silent=True) as server, Downloader(settings) as downloader:
        url = server.url("/x.jpg").replace("http:", f"{scheme}:")
        started = time.monotonic()
        assert fetch_reason(downloader, url) == "deadline exceeded: 1 s"
        assert time.monotonic() - started < 3 * 1


def test_deadline_covers_redirects_and_the_stage_keeps_nothing_of_a_cut_download(
    tmp_path: Path, web_server: WebServer
) -> None:
    with ScriptedServer(TRICKLED_HEADERS, interval=0.2) as trickler:
        web_server.redirect("/hop", trickler.url("/x.jpg"))
        web_server.add("/slow-hop", Response(status=302, headers={"Location": "/hop"}, delay=0.5))
        root = tmp_path / "project"
        write_stage_params(
            root, web_server, ["/slow-hop"], retries=2, timeout_s=1.0, deadline_s=1.5
        )
        started = time.monotonic()
        with pytest.raises(StageError, match="no image for any of the 1 character"):
            collect_all(root, load_stage_params(root))  # nothing for anyone: not a result
        assert time.monotonic() - started < 3 * 1.5
    (reject,) = read_csv(root / RAW_REJECTS)
    assert reject["reason"] == "deadline exceeded: 1.5 s"
    assert read_csv(root / RAW_MANIFEST) == []
    directory = root / RAW_DIR / "test_subject"
    assert {p.name for p in directory.iterdir()} == {JOURNAL}  # not recorded as done
    assert not list(root.rglob(f"{TMP_PREFIX}*"))


def test_deadline_bounds_retries_and_their_backoff(web_server: WebServer) -> None:
    url = web_server.add("/down.jpg", Response(status=503))
    # without a bound over the retries: 0.4 + 0.8 + 1.6 + 3.2 s of backoff alone
    with Downloader(config(retries=4, backoff_s=0.4, deadline_s=1)) as downloader:
        started = time.monotonic()
        assert fetch_reason(downloader, url) == "deadline exceeded: 1 s"
        assert time.monotonic() - started < 3 * 1
    assert 1 <= web_server.count("/down.jpg") <= 3


# --- credentials in URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("https://user:secret@host/x.jpg", "https://***@host/x.jpg"),
        ("http://user@host:8080/a.png", "http://***@host:8080/a.png"),
        ("HTTPS://User:Pass@Host/x", "HTTPS://***@Host/x"),
        ("https://u:p@ss@host/x.jpg", "https://***@host/x.jpg"),  # the last @ ends userinfo
        ("https://:secret@host", "https://***@host"),
        ("https://host/a@b.jpg", "https://host/a@b.jpg"),  # an @ in the path is no userinfo
        ("https://host/x?to=a@b", "https://host/x?to=a@b"),
        ("https://host/x.jpg", "https://host/x.jpg"),
        ("/data/source/a@b.png", "/data/source/a@b.png"),
        (
            "invalid URL: Failed to parse: http://u:secret@127.0.0.1:99999/x.jpg",
            "invalid URL: Failed to parse: http://***@127.0.0.1:99999/x.jpg",
        ),
        (
            "'http://a:b@one/x' then https://c:d@two/y",
            "'http://***@one/x' then https://***@two/y",
        ),
        # query parameters named like secrets lose their values, the others stay
        ("https://h/x.jpg?api_key=abc&page=2", "https://h/x.jpg?api_key=***&page=2"),
        ("https://h/x?q=cat&access_token=t0k#f", "https://h/x?q=cat&access_token=***#f"),
        (
            "https://b.s3.example/x.png?X-Amz-Credential=AK%2F1&X-Amz-Signature=9f&X-Amz-Expires=60",
            "https://b.s3.example/x.png?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60",
        ),
        (
            "https://h/x?apiKey=1&sig=2&Key-Pair-Id=3",
            "https://h/x?apiKey=***&sig=***&Key-Pair-Id=***",
        ),
        ("https://h/x?keyword=cat&monkey=1&token=", "https://h/x?keyword=cat&monkey=1&token="),
        (
            "http 403 for https://u:p@h/x?session=abc (expired)",
            "http 403 for https://***@h/x?session=*** (expired)",
        ),
    ],
)
def test_redact_credentials(text: str, redacted: str) -> None:
    assert redact_credentials(text) == redacted


def test_credentials_in_the_url_are_still_sent() -> None:
    body = jpeg(14)
    with ScriptedServer(http_reply(body), step=1 << 20) as server, Downloader(config()) as dl:
        url = server.url("/private.jpg").replace("://", "://user:s3cret@")
        assert dl.fetch(url) == body
    (request,) = server.requests
    expected = base64.b64encode(b"user:s3cret")
    assert b"Authorization: Basic " + expected in request, request


# --- the whole stage on a server full of faults ---------------------------------------------------


def serve_faults(server: WebServer) -> dict[str, str]:
    """Every fault the downloader must survive, by path -> expected reject reason."""
    for path, (body, content_type, *_rest) in VALID.items():
        server.serve(path, body, content_type)
    server.add(
        "/retry.jpg", Response(status=500), Response(body=jpeg(20), content_type="image/jpeg")
    )
    server.redirect("/redirected", "/valid.jpg.copy")
    server.serve("/valid.jpg.copy", VALID["/valid.jpg"][0], "image/jpeg")
    server.add("/missing.jpg", Response(status=404))
    server.add("/error.jpg", Response(status=500))
    server.add("/slow.jpg", Response(body=jpeg(21), delay=1.5))
    server.serve("/big.jpg", b"\xff\xd8" + b"\0" * 300_000, "image/jpeg")
    server.serve("/big-unsized.jpg", b"\xff\xd8" + b"\0" * 300_000, "image/jpeg", send_length=False)
    server.serve("/page.jpg", "<!DOCTYPE html><html><body>login</body></html>", "image/jpeg")
    server.serve("/truncated.jpg", jpeg(22, (200, 150))[:3000], "image/jpeg")
    server.serve("/empty.jpg", b"", "image/jpeg")
    server.serve("/bomb.png", png_declaring(8_000, 8_000), "image/png")
    server.redirect("/loop-a", "/loop-b")
    server.redirect("/loop-b", "/loop-a")
    server.redirect("/to-private", "http://10.1.2.3/x.jpg")
    server.redirect("/to-metadata", "http://169.254.169.254/latest/meta-data/iam")
    return {
        "/missing.jpg": "http 404",
        "/error.jpg": "http 500 after 1 retries",
        "/slow.jpg": "timeout after 1 retries",
        "/big.jpg": "too large: > 200000 bytes",
        "/big-unsized.jpg": "too large: > 200000 bytes",
        "/page.jpg": "not an image: HTML/XML document",
        "/truncated.jpg": "truncated image: ",
        "/empty.jpg": "empty file (0 bytes)",
        "/bomb.png": "decompression bomb: 8000x8000 exceeds 40000000 pixels",
        "/loop-a": "redirect loop",
        "/to-private": "refused private address 10.1.2.3",
        "/to-metadata": "refused link-local address 169.254.169.254",
        "/redirected": "duplicate of ",
    }


def write_stage_params(root: Path, server: WebServer, paths: list[str], **collect: object) -> None:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["character,url"] + [f"Test Subject,{server.url(path)}" for path in paths]
    (root / "urls.csv").write_text("\n".join(lines) + "\n")
    settings = config(**collect).model_dump()
    (root / "params.json").write_text(
        json.dumps({"characters": [{"name": "Test Subject"}], "collect": settings})
    )


def load_stage_params(root: Path):  # type: ignore[no-untyped-def]
    return parse_params(json.loads((root / "params.json").read_text()))


def test_collect_keeps_valid_images_and_records_every_fault(
    tmp_path: Path, web_server: WebServer
) -> None:
    expected = serve_faults(web_server)
    paths = [*VALID, "/retry.jpg", *expected]
    root = tmp_path / "project"
    write_stage_params(root, web_server, paths)
    since = len(_connects)

    (result,) = collect_all(root, load_stage_params(root))

    manifest = {
        row["url"].removeprefix(web_server.base_url): row for row in read_csv(root / RAW_MANIFEST)
    }
    rejects = {
        row["url_or_path"].removeprefix(web_server.base_url): row["reason"]
        for row in read_csv(root / RAW_REJECTS)
    }
    assert set(manifest) == {*VALID, "/retry.jpg"}
    for path, (_body, _type, fmt, width, height) in VALID.items():
        row = manifest[path]
        assert (row["format"], int(row["width"]), int(row["height"])) == (fmt, width, height), path
        assert (root / row["path"]).is_file()
    assert set(rejects) == set(expected)
    for path, reason in expected.items():
        assert rejects[path].startswith(reason), (path, rejects[path])
    assert rejects["/redirected"] == f"duplicate of {manifest['/valid.jpg']['sha256']}"
    assert (result.kept, result.rejected, result.fetched) == (
        len(VALID) + 1,
        len(expected),
        len(paths),
    )

    assert web_server.count("/retry.jpg") == 2 and web_server.count("/missing.jpg") == 1
    assert all(host == "127.0.0.1" for host in connected_hosts(since))
    directory = root / RAW_DIR / "test_subject"
    assert {p.name for p in directory.iterdir()} == {
        Path(r["path"]).name for r in manifest.values()
    } | {JOURNAL, DONE}
    assert not list(root.rglob(f"{TMP_PREFIX}*"))


# --- resuming after kill -9 --------------------------------------------------------------------------

RUN_COLLECT = """
import json, sys
from pathlib import Path
from anime_face_id.collect import collect_all
from anime_face_id.config import parse_params
root = Path(sys.argv[1])
collect_all(root, parse_params(json.loads((root / "params.json").read_text())))
"""


@pytest.mark.slow
def test_resume_after_kill_fetches_only_what_is_missing(
    tmp_path: Path, web_server: WebServer
) -> None:
    paths = [f"/slow{index:02d}.jpg" for index in range(12)]
    for index, path in enumerate(paths):
        web_server.add(path, Response(body=jpeg(100 + index), content_type="image/jpeg", delay=0.4))
    root = tmp_path / "project"
    write_stage_params(root, web_server, paths, workers=2, timeout_s=5)
    journal = root / RAW_DIR / "test_subject" / JOURNAL

    process = subprocess.Popen(
        [sys.executable, "-c", RUN_COLLECT, str(root)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(read_journal(journal)[0]) < 4:
            assert process.poll() is None, "the collect run ended before it could be killed"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    done_before, _damaged = read_journal(journal)
    counts_before = web_server.counts()
    assert 4 <= len(done_before) < len(paths)
    assert not (root / RAW_DIR / "test_subject" / DONE).exists()

    (result,) = collect_all(root, load_stage_params(root))

    counts_after = web_server.counts()
    assert result.kept == len(paths)
    assert result.fetched == len(paths) - len(done_before)
    for entry in done_before.values():
        path = entry["url"].removeprefix(web_server.base_url)
        assert counts_after[path] == counts_before[path] == 1, path
    assert all(counts_after.get(path, 0) >= 1 for path in paths)
    assert (
        sum(counts_after.values()) <= len(paths) + 2 * 2
    )  # at most the killed run's in-flight window again
    assert len(read_csv(root / RAW_MANIFEST)) == len(paths)
    assert not list(root.rglob(f"{TMP_PREFIX}*"))
