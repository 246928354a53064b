"""The project's own downloader: one place that turns a URL (or a local file) into
validated image bytes, or into a short, specific reason why not.

Search backends only propose URLs; everything that can go wrong on the way to a usable
image is handled here: address policy (see ``netguard``), redirects followed by hand so
that every hop is checked, timeouts, retries with exponential backoff for failures that
may go away (5xx, timeouts, dropped connections; 429 after the Retry-After the server
names; never other 4xx), a byte cap, a decode of the
whole image (decompression-bomb limit included), and an atomic, content-addressed write.

Two clocks bound a fetch. ``timeout_s`` bounds each connect and each wait for the next
bytes; ``deadline_s`` bounds the whole URL: connect, TLS, status line, headers, every
redirect, every retry with its backoff, and the body (see ``Downloader.fetch``).

URLs may carry credentials (``https://user:secret@host/x.jpg``); the fetch uses them, but
anything that writes a URL to a file or a log passes it through ``redact_credentials``.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
from urllib3.exceptions import (
    DecodeError,
    NameResolutionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from anime_face_id.config import CollectConfig
from anime_face_id.fileio import UnreadableFile, atomic_write_bytes, read_regular_file
from anime_face_id.imaging import DEFAULT_MAX_DECODE_BYTES, ImageRejected, inspect
from anime_face_id.interrupt import on_stop, raise_if_stopping
from anime_face_id.netguard import (
    AddressPolicy,
    GuardedAdapter,
    RefusedAddress,
    SocketWatch,
    watching,
)

USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0 Safari/537.36 anime-face-id/0.1"
)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
TOO_MANY_REQUESTS = 429
CHUNK_BYTES = 64 * 1024
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


class FetchRejected(Exception):
    """This URL or file gives no usable image; ``reason`` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Transient(Exception):
    """A failure worth another try (5xx, 429, timeout, dropped connection); ``wait_s``:
    how long the server asked us to wait first (Retry-After), if it said."""

    def __init__(self, kind: str, detail: str = "", wait_s: float | None = None):
        super().__init__(kind)
        self.kind = kind
        self.detail = detail
        self.wait_s = wait_s

    def final_reason(self, retries: int) -> str:
        reason = f"{self.kind} after {retries} retries"
        return f"{reason} ({self.detail})" if self.detail else reason


@dataclass(frozen=True)
class _Redirect:
    location: str


class _Deadline:
    """``seconds`` for one URL in all, enforced by a watchdog thread that cuts the
    exchange's sockets when they run out (see ``netguard.SocketWatch``): a server that
    sends its status line one byte per ``timeout_s`` would otherwise hold a worker for as
    long as it likes. The only wait it cannot cut is a slow DNS answer, which the system
    resolver's own timeouts bound."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.watch = SocketWatch()
        self._ends = time.monotonic() + seconds
        self._timer = threading.Timer(seconds, self.watch.cut)
        self._timer.daemon = True  # never keeps the interpreter alive

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        self.watch.finish()  # a late cut must not hit sockets back in the pool
        self._timer.join()  # one timer thread per fetch: none outlives it

    def remaining(self) -> float:
        return max(0.0, self._ends - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.watch.is_cut or self.remaining() == 0.0

    def rejection(self) -> FetchRejected:
        return FetchRejected(f"deadline exceeded: {self.seconds:g} s")


@dataclass(frozen=True)
class ValidatedImage:
    sha256: str
    extension: str
    format: str
    width: int  # after EXIF orientation
    height: int
    phash: str
    size: int
    data: bytes = field(repr=False)

    @property
    def filename(self) -> str:
        return image_filename(self.sha256, self.extension)


def image_filename(sha256: str, extension: str) -> str:
    return f"{sha256}.{extension}"


def validate_image(
    data: bytes, max_pixels: int, max_memory: int = DEFAULT_MAX_DECODE_BYTES
) -> ValidatedImage:
    """Decode all of ``data`` (a truncated file fails here, not in a later stage)."""
    try:
        info = inspect(data, max_pixels, max_memory)
    except ImageRejected as rejected:
        raise FetchRejected(rejected.reason) from None
    sha256 = hashlib.sha256(data).hexdigest()
    return ValidatedImage(
        sha256, info.extension, info.format, info.width, info.height, info.phash, len(data), data
    )


def store_image(directory: Path, image: ValidatedImage) -> Path:
    """Write the image under its content address; writing it twice changes nothing."""
    path = directory / image.filename
    if not path.is_file() or path.stat().st_size != image.size:
        atomic_write_bytes(path, image.data)
    return path


def read_local_file(path: Path, max_bytes: int) -> bytes:
    """The folder backend's counterpart of ``Downloader.fetch``: a regular file only (a
    pipe in the folder would block, a link to /dev/zero would never end)."""
    try:
        return read_regular_file(path, max_bytes)
    except UnreadableFile as error:
        if error.reason.startswith("too large"):
            raise FetchRejected(f"too large: > {max_bytes} bytes") from None
        if error.reason == "file not found":
            raise FetchRejected("file not found") from None
        raise FetchRejected(f"cannot read file: {error.reason}") from None


def default_verify() -> bool | str:
    """Honour the standard CA bundle variables even though the session ignores the rest of
    the environment (proxy variables would bypass the address policy)."""
    for name in CA_BUNDLE_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return True


def decimal_header(value: str) -> int | None:
    """A header value of ASCII digits as a number, else None (treated as absent):
    str.isdigit also accepts '²' or '٣', which int() refuses."""
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), or None."""
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    seconds = decimal_header(value)
    if seconds is not None:
        return float(seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def check_scheme(url: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as error:  # e.g. an unclosed "[" of an IPv6 literal
        raise FetchRejected(f"invalid URL: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchRejected(f"unsupported URL scheme {scheme or '(none)'!r}")
    if not parts.hostname:
        raise FetchRejected("invalid URL: no host")


class Downloader:
    """Fetches image URLs under one ``CollectConfig``; safe to share between threads."""

    def __init__(
        self,
        config: CollectConfig,
        verify: bool | str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        user_agent: str = USER_AGENT,
    ):
        self.config = config
        self.user_agent = user_agent
        self.verify = default_verify() if verify is None else verify
        self.policy = AddressPolicy.from_cidrs(config.allow_networks)
        self._sleep = sleep
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    def __enter__(self) -> Downloader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no proxies from the environment: see default_verify
            adapter = GuardedAdapter(self.policy, pool_maxsize=self.config.workers)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = self.user_agent
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def fetch(self, url: str) -> bytes:
        """The body of ``url`` after following redirects, or FetchRejected.

        ``deadline_s`` covers the whole fetch, retries included: connects, status lines,
        headers, redirects, backoff pauses and the body together never take much more than
        ``deadline_s`` (a read under way is cut at once, a connect gets no more than the
        time left; only a DNS look-up is left to the resolver's own timeouts). Per attempt
        it would not be enough: with retries, a server trickling bytes could hold a worker
        (retries + 1) times as long, and a caller budgeting a run needs one number per URL.
        A fetch that runs out is rejected as "deadline exceeded: <deadline_s> s"; a retry
        that could not finish in time is not started."""
        raise_if_stopping()
        with (
            _Deadline(self.config.deadline_s) as deadline,
            watching(deadline.watch),
            on_stop(deadline.watch.cut),  # Ctrl-C cuts a read under way, as the deadline does
        ):
            try:
                data = self._follow_redirects(url, deadline)
            except FetchRejected:
                raise_if_stopping()  # the cut was the user's, not the server's fault
                if deadline.expired:  # e.g. a TLS error: the cut, not the server, caused it
                    raise deadline.rejection() from None
                raise
            raise_if_stopping()
            if deadline.watch.is_cut:  # a body without a length ends at the cut, cleanly
                raise deadline.rejection()
            return data

    def _follow_redirects(self, url: str, deadline: _Deadline) -> bytes:
        seen = {url}
        current = url
        for _hop in range(self.config.max_redirects + 1):
            check_scheme(current)
            outcome = self._with_retries(current, deadline)
            if isinstance(outcome, bytes):
                return outcome
            if outcome.location in seen:
                raise FetchRejected("redirect loop")
            seen.add(outcome.location)
            current = outcome.location
        raise FetchRejected(f"too many redirects (more than {self.config.max_redirects})")

    def _with_retries(self, url: str, deadline: _Deadline) -> bytes | _Redirect:
        retries = self.config.retries
        for attempt in range(retries + 1):
            try:
                return self._attempt(url, deadline)
            except _Transient as failure:
                if deadline.expired:
                    raise deadline.rejection() from None
                if attempt == retries:
                    raise FetchRejected(failure.final_reason(retries)) from None
                pause = max(self.config.backoff_s * 2**attempt, failure.wait_s or 0.0)
                if pause >= deadline.remaining():  # the next try could not even start
                    if failure.wait_s is not None:
                        raise FetchRejected(
                            f"{failure.kind}: the server asked to wait {failure.wait_s:g} s, "
                            f"beyond the {self.config.deadline_s:g} s deadline"
                        ) from None
                    raise deadline.rejection() from None
                self._sleep(pause)
        raise AssertionError("unreachable")

    def _attempt(self, url: str, deadline: _Deadline) -> bytes | _Redirect:
        raise_if_stopping()  # e.g. after a backoff pause
        if deadline.expired:
            raise deadline.rejection()
        # A connect cannot be cut by the watchdog (shutting down a socket that is still
        # connecting does not wake it), so it gets no more than the time that is left.
        timeout = min(self.config.timeout_s, deadline.remaining())
        try:
            response = self._session().get(
                url,
                stream=True,
                allow_redirects=False,
                timeout=(timeout, timeout),
                verify=self.verify,
            )
        except RefusedAddress as refused:
            raise FetchRejected(refused.reason) from None
        except requests.RequestException as error:
            raise _classify_request_error(error, url) from None
        with response:
            return self._interpret(response, url, deadline)

    def _interpret(
        self, response: requests.Response, url: str, deadline: _Deadline
    ) -> bytes | _Redirect:
        status = response.status_code
        if status in REDIRECT_STATUSES:
            location = response.headers.get("Location")
            if not location:
                raise FetchRejected(f"http {status} without a Location header")
            return _Redirect(urljoin(url, location))
        if status >= 500:
            raise _Transient(f"http {status}")
        if status == TOO_MANY_REQUESTS:  # rate limited: wait as asked, then try again
            raise _Transient(f"http {status}", wait_s=retry_after_s(response.headers))
        if not 200 <= status < 300:
            raise FetchRejected(f"http {status}")
        return self._read_body(response, deadline)

    def _read_body(self, response: requests.Response, deadline: _Deadline) -> bytes:
        cap = self.config.max_bytes
        declared = decimal_header(response.headers.get("Content-Length") or "")
        if declared is not None and declared > cap:
            raise FetchRejected(f"too large: > {cap} bytes")
        chunks: list[bytes] = []
        total = 0
        while chunk := self._read_some(response):
            total += len(chunk)
            if total > cap:  # no or false Content-Length: count what actually arrives
                raise FetchRejected(f"too large: > {cap} bytes")
            if deadline.expired:  # bytes arriving fast enough never let the watchdog act
                raise deadline.rejection()
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _read_some(response: requests.Response) -> bytes:
        """Whatever arrived, up to CHUNK_BYTES (decompressed). read1, unlike
        iter_content, returns after one socket read, so a server trickling bytes is
        caught by the deadline instead of filling a whole chunk first."""
        try:
            return response.raw.read1(CHUNK_BYTES, decode_content=True) or b""
        except ReadTimeoutError:
            raise _Transient("timeout") from None
        except DecodeError as error:
            raise FetchRejected(f"bad content encoding: {_short(error)}") from None
        except SSLError as error:
            raise FetchRejected(f"tls error: {_short(error)}") from None
        except (ProtocolError, OSError) as error:
            raise _Transient("connection failed", _short(error)) from None


def _short(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _root_cause(error: BaseException) -> BaseException:
    """The urllib3 exception requests wrapped (possibly inside a MaxRetryError)."""
    inner = error.args[0] if error.args and isinstance(error.args[0], BaseException) else error
    return getattr(inner, "reason", None) or inner


def _classify_request_error(error: requests.RequestException, url: str) -> Exception:
    cause = _root_cause(error)
    if isinstance(error, requests.exceptions.SSLError):
        return FetchRejected(f"tls error: {_short(cause)}")
    if isinstance(error, requests.Timeout) or isinstance(cause, ReadTimeoutError):
        return _Transient("timeout")
    if isinstance(cause, NameResolutionError):
        return FetchRejected(f"cannot resolve host {urlsplit(url).hostname}")
    if isinstance(error, requests.exceptions.ContentDecodingError):
        return FetchRejected(f"bad content encoding: {_short(cause)}")
    if isinstance(error, requests.exceptions.InvalidURL | requests.exceptions.InvalidSchema):
        return FetchRejected(f"invalid URL: {_short(error)}")
    if isinstance(error, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return _Transient("connection failed", _short(cause))
    return FetchRejected(f"request failed: {_short(error)}")
