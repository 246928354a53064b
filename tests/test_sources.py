"""Search backends: google (the real library, Chromium and chromedriver against a local
results page), folder, urls, and the duckduckgo adapter with an injected client."""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from anime_face_id.collect import Collection, fetch_candidates
from anime_face_id.config import Character, CollectConfig
from anime_face_id.errors import EngineRefused
from anime_face_id.fileio import write_csv
from anime_face_id.sources import SearchError, duckduckgo, folder, get_backend, google, urls
from anime_face_id.sources.base import wanted_count
from tests.support.processes import run_stage_flow
from tests.support.webserver import (
    Response,
    WebServer,
    https_server,
    search_results_page,
    web_server,
)

__all__ = ["https_server", "web_server"]  # fixtures used below

CHROMEDRIVER = "/usr/bin/chromedriver"
KUROKO = Character(name="Kuroko Tetsuya", query="Kuroko Tetsuya Kuroko no Basket")


def jpeg(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40 + shade, 30), (shade * 40 % 256, 90, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


# --- google --------------------------------------------------------------------------


def test_library_arguments_use_the_query_or_the_configured_page() -> None:
    plain = google.library_arguments(Character(name="A, B"), CollectConfig(limit=4), "/d")
    assert plain == {
        "keywords": "A B",
        "limit": 6,
        "no_download": True,
        "silent_mode": True,
        "chromedriver": "/d",
    }
    paged = CollectConfig(limit=2, search_factor=1.0, search_url="http://127.0.0.1:1/s?q={query}")
    assert google.library_arguments(KUROKO, paged, "/d")["url"] == (
        "http://127.0.0.1:1/s?q=Kuroko%20Tetsuya%20Kuroko%20no%20Basket"
    )


def test_search_url_braces_other_than_query_are_kept_literally() -> None:
    braced = CollectConfig(limit=2, search_url="http://x/?q={query}&tbs={isz:l}&f={}")
    assert google.library_arguments(KUROKO, braced, "/d")["url"] == (
        "http://x/?q=Kuroko%20Tetsuya%20Kuroko%20no%20Basket&tbs={isz:l}&f={}"
    )
    # doubled braces, which str.format once required, still mean one brace
    doubled = CollectConfig(limit=2, search_url="http://x/?q={query}&tbs={{isz:l}}")
    assert google.library_arguments(KUROKO, doubled, "/d")["url"].endswith("&tbs={isz:l}")


def test_driver_failure_becomes_search_error_not_an_exit(tmp_path: Path) -> None:
    config = CollectConfig(
        backend="google", limit=2, chromedriver=str(tmp_path / "no-such-chromedriver")
    )
    with pytest.raises(SearchError) as failure:
        get_backend(config)(KUROKO, "kuroko_tetsuya", config)
    message = str(failure.value)
    assert "google search for 'Kuroko Tetsuya Kuroko no Basket' failed" in message
    assert "sys.exit" in message and "chromedriver" in message  # the library's own last words


def local_google(web_server: WebServer, **settings: Any) -> CollectConfig:
    """The google backend searching the local server's /search page with the real Chromium."""
    return CollectConfig(
        **{
            "backend": "google",
            "limit": 2,
            "search_url": web_server.url("/search?q={query}"),
            "chromedriver": CHROMEDRIVER,
            **settings,
        }
    )


@pytest.mark.slow
@pytest.mark.browser
def test_google_backend_scrapes_local_results_page_and_images_download_over_https(
    tmp_path: Path, web_server: WebServer, https_server: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_paths = [f"/images/{index}.jpg" for index in range(8)]
    for index, path in enumerate(image_paths):
        https_server.serve(path, jpeg(index), "image/jpeg")
    page = search_results_page([https_server.url(path) for path in image_paths])
    web_server.serve("/search", page, "text/html; charset=utf-8")
    config = local_google(
        web_server,
        limit=4,
        search_factor=1.5,
        search_timeout_s=120,
        allow_networks=["127.0.0.0/8"],
    )

    found = get_backend(config)(KUROKO, "kuroko_tetsuya", config)

    assert found == [https_server.url(path) for path in image_paths[:6]]  # limit x search_factor
    assert web_server.count("/search") == 1
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(https_server.ca_file))
    result = fetch_candidates(Collection(tmp_path, KUROKO, "kuroko_tetsuya", config), found)
    assert (result.kept, result.rejected) == (4, 0)
    assert [https_server.count(path) for path in image_paths] == [1, 1, 1, 1, 0, 0, 0, 0]


SORRY_PAGE = (
    b"<html><head><title>https://www.google.com/search?q=x</title></head><body>"
    b"<form id='captcha-form' action='index' method='post'><div id='recaptcha' "
    b"class='g-recaptcha'></div></form><div>Our systems have detected unusual traffic from "
    b"your computer network. This page checks to see if it's really you sending the "
    b"requests, and not a robot.</div></body></html>"
)


def test_pages_by_which_google_refuses_are_told_from_results_pages() -> None:
    assert "unusual traffic" in google.refusal_in(SORRY_PAGE.decode())
    consent = '<form action="https://consent.google.com/save"><input type="submit"></form>'
    assert "consent" in google.refusal_in(consent)
    assert "consent" in google.refusal_in("<title>Before you continue to Google</title>")
    # a page that only links to the consent site is not the wall
    assert google.refusal_in("<a href='https://consent.google.com/ml'>cookies</a>") is None
    assert google.refusal_in(search_results_page(["https://a.example/1.jpg"])) is None
    assert google.refusal_in("<html><body>No results</body></html>") is None


@pytest.mark.slow
@pytest.mark.browser
def test_google_refusing_to_search_is_an_engine_refusal(web_server: WebServer) -> None:
    web_server.add("/search", Response(status=429, body=SORRY_PAGE, content_type="text/html"))
    config = local_google(web_server, search_timeout_s=120)
    with pytest.raises(EngineRefused) as error:
        get_backend(config)(KUROKO, "kuroko_tetsuya", config)
    assert str(error.value).startswith(
        "google search for 'Kuroko Tetsuya Kuroko no Basket' refused: Google answered with "
        "its 'unusual traffic' page"
    )


@pytest.mark.slow
@pytest.mark.browser
def test_google_search_that_hangs_is_killed_at_the_timeout(web_server: WebServer) -> None:
    web_server.add("/search", Response(body=b"<html></html>", content_type="text/html", delay=60))
    config = local_google(web_server, search_timeout_s=6)
    started = time.monotonic()
    with pytest.raises(SearchError, match=r"timed out after 6 s"):
        get_backend(config)(KUROKO, "kuroko_tetsuya", config)
    assert time.monotonic() - started < 20


# --- folder --------------------------------------------------------------------------


def folder_config(path: Path, limit: int = 10) -> CollectConfig:
    return CollectConfig(backend="folder", folder=str(path), limit=limit)


def test_folder_matches_slug_or_exact_name_and_lists_direct_files(tmp_path: Path) -> None:
    by_slug = tmp_path / "kuroko_tetsuya"
    (by_slug / "nested").mkdir(parents=True)
    for name in ("b.jpg", "a.png", ".hidden.jpg", "nested/deep.jpg"):
        (by_slug / name).write_bytes(b"x")
    by_name = tmp_path / "Nishikino Maki"
    by_name.mkdir()
    (by_name / "maki.jpg").write_bytes(b"x")
    config = folder_config(tmp_path)

    assert folder.search(KUROKO, "kuroko_tetsuya", config).candidates == [
        f"{tmp_path}/kuroko_tetsuya/a.png",
        f"{tmp_path}/kuroko_tetsuya/b.jpg",
    ]
    maki = Character(name="Nishikino Maki")
    found = folder.search(maki, "nishikino_maki", config)
    assert found.candidates == [f"{tmp_path}/Nishikino Maki/maki.jpg"] and found.skipped == []


def test_folder_unicode_name_and_relative_folder(tmp_path: Path) -> None:
    name = "Sakurauchi Riko 桜内梨子 Amélie"
    stored = tmp_path / "data" / "import" / unicodedata.normalize("NFD", name)
    stored.mkdir(parents=True)
    (stored / "1.jpg").write_bytes(b"x")
    config = CollectConfig(backend="folder", folder="data/import", limit=3)
    found = folder.search(
        Character(name=name), "sakurauchi_riko_amelie_0000", config, root=tmp_path
    )
    assert found.candidates == [
        f"data/import/{stored.name}/1.jpg"
    ]  # relative to the project root, as configured


def test_missing_folder_names_the_directories_it_looked_for(tmp_path: Path) -> None:
    config = folder_config(tmp_path)
    with pytest.raises(SearchError) as failure:
        folder.search(Character(name="Mai/../Sakurajima"), "mai_sakurajima_12345678", config)
    assert str(failure.value) == (
        f"folder backend: no directory for 'Mai/../Sakurajima': looked for "
        f"{tmp_path}/mai_sakurajima_12345678 and {tmp_path}/Mai/../Sakurajima"
    )
    with pytest.raises(SearchError, match="is not a directory"):
        folder.search(KUROKO, "kuroko_tetsuya", folder_config(tmp_path / "absent"))


def refuse_listing(monkeypatch: pytest.MonkeyPatch, refused: Path) -> None:
    """Path.iterdir fails for ``refused`` as for an unreadable folder (we run as root, for
    whom chmod 000 changes nothing)."""
    iterdir = Path.iterdir

    def guarded(self: Path):  # type: ignore[no-untyped-def]
        if self == refused:
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", guarded)


@pytest.mark.parametrize("unreadable", ["root", "character"])
def test_an_unreadable_folder_is_a_search_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unreadable: str
) -> None:
    (tmp_path / "kuroko_tetsuya").mkdir()
    (tmp_path / "kuroko_tetsuya" / "a.png").write_bytes(b"x")
    refused = tmp_path if unreadable == "root" else tmp_path / "kuroko_tetsuya"
    refuse_listing(monkeypatch, refused)
    config = folder_config(tmp_path)
    with pytest.raises(SearchError) as failure:
        folder.search(KUROKO, "kuroko_tetsuya", config)
    assert str(failure.value) == f"folder backend: cannot list {refused}: Permission denied"
    digest = folder.listing_digest(KUROKO, "kuroko_tetsuya", config, None)
    assert digest.startswith("unavailable: folder backend: cannot list")


def test_a_file_name_that_is_not_utf8_is_skipped_with_its_reason(tmp_path: Path) -> None:
    directory = tmp_path / "kuroko_tetsuya"
    directory.mkdir()
    (directory / "a.png").write_bytes(b"x")
    undecodable = directory / os.fsdecode(b"\xff\xfe.png")  # as Linux lists such a name
    undecodable.write_bytes(b"x")
    config = folder_config(tmp_path)
    found = folder.search(KUROKO, "kuroko_tetsuya", config)
    assert found.candidates == [f"{directory}/a.png"]
    assert found.skipped == [(f"{directory}/\\xff\\xfe.png", "file name is not valid UTF-8")]
    # the 'already collected' fingerprint reads the name's bytes and tells it apart
    before = folder.listing_digest(KUROKO, "kuroko_tetsuya", config, None)
    assert not before.startswith("unavailable")
    undecodable.rename(directory / os.fsdecode(b"\xfe\xff.png"))
    assert folder.listing_digest(KUROKO, "kuroko_tetsuya", config, None) != before


# --- urls ----------------------------------------------------------------------------


def test_urls_csv_matches_exact_name_or_slug(tmp_path: Path) -> None:
    csv_path = tmp_path / "urls.csv"
    write_csv(
        csv_path,
        ("character", "url"),
        [
            {"character": "Kuroko Tetsuya", "url": "https://a.example/1.jpg"},
            {"character": "kuroko_tetsuya", "url": "https://a.example/2.jpg"},
            {"character": "kuroko tetsuya", "url": "https://a.example/not-exact.jpg"},
            {"character": "Kuroko Tetsuya", "url": "https://a.example/1.jpg"},
            {"character": "Kuroko Tetsuya", "url": ""},
            {"character": "Someone Else", "url": "https://a.example/3.jpg"},
        ],
    )
    config = CollectConfig(backend="urls", urls="urls.csv")
    assert urls.search(KUROKO, "kuroko_tetsuya", config, root=tmp_path) == [
        "https://a.example/1.jpg",
        "https://a.example/2.jpg",
    ]
    with pytest.raises(SearchError, match="no row for 'Nobody'"):
        urls.search(Character(name="Nobody"), "nobody", config, root=tmp_path)


def test_urls_csv_missing_or_malformed(tmp_path: Path) -> None:
    config = CollectConfig(backend="urls", urls=str(tmp_path / "urls.csv"))
    with pytest.raises(SearchError, match="does not exist"):
        urls.search(KUROKO, "kuroko_tetsuya", config)
    (tmp_path / "urls.csv").write_text("name,link\nKuroko Tetsuya,https://a.example/1.jpg\n")
    with pytest.raises(SearchError, match="missing column"):
        urls.search(KUROKO, "kuroko_tetsuya", config)


def test_urls_csv_with_an_oversized_cell_is_a_search_error_naming_the_line(
    tmp_path: Path,
) -> None:
    csv_path = tmp_path / "urls.csv"
    huge = "https://a.example/" + "x" * 140_000  # over csv's 131072-character field limit
    csv_path.write_text(
        f"character,url\nKuroko Tetsuya,https://a.example/1.jpg\nKuroko Tetsuya,{huge}\n"
    )
    config = CollectConfig(backend="urls", urls=str(csv_path))
    with pytest.raises(SearchError) as failure:
        urls.search(KUROKO, "kuroko_tetsuya", config)
    assert str(failure.value) == (
        f"urls backend: cannot read {csv_path}: line 3: field larger than field limit (131072)"
    )
    digest = urls.listing_digest(KUROKO, "kuroko_tetsuya", config, None)
    assert digest.startswith("unavailable: urls backend: cannot read")


# --- duckduckgo ----------------------------------------------------------------------


class FakeImageSearch:
    """Stands in for ddgs.DDGS, which needs the internet; records how it was asked."""

    def __init__(self, results: list[Any] | Exception):
        self.results = results
        self.calls: list[tuple[str, dict]] = []

    def images(self, query: str, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls.append((query, kwargs))
        if isinstance(self.results, Exception):
            raise self.results
        return self.results  # type: ignore[return-value]


@pytest.fixture
def duckduckgo_start_page(web_server: WebServer, monkeypatch: pytest.MonkeyPatch) -> WebServer:
    """A local stand-in for the page ddgs starts from, which the adapter asks for again
    when a search finds nothing (answering 200 unless a test says otherwise)."""
    web_server.serve("/", b'<html>vqd="4-1"</html>', "text/html")
    web_server.serve("/i.js", b'{"results": []}', "application/json")
    monkeypatch.setattr(duckduckgo, "START_PAGE", web_server.url("/"))
    return web_server


def test_duckduckgo_adapter_keeps_image_urls_in_order() -> None:
    client = FakeImageSearch(
        [
            {"image": "https://a.example/1.jpg", "title": "one"},
            {"image": "https://a.example/1.jpg"},
            {"image": "data:image/png;base64,AAAA"},
            {"thumbnail": "https://a.example/t.jpg"},
            "junk",
            {"image": "http://b.example/2.png"},
            {"image": "https://c.example/3.webp"},
        ]
    )
    search = duckduckgo.make_search(lambda config: client)
    config = CollectConfig(backend="duckduckgo", limit=2, search_factor=1.0)
    assert search(KUROKO, "kuroko_tetsuya", config) == [
        "https://a.example/1.jpg",
        "http://b.example/2.png",
    ]
    assert client.calls == [("Kuroko Tetsuya Kuroko no Basket", {"max_results": 2})]


def test_duckduckgo_failure_becomes_search_error(duckduckgo_start_page: WebServer) -> None:
    search = duckduckgo.make_search(lambda config: FakeImageSearch(TimeoutError("ratelimited")))
    config = CollectConfig(backend="duckduckgo", limit=3)
    with pytest.raises(
        SearchError,
        match=r"duckduckgo search for 'Kuroko Tetsuya Kuroko no Basket' failed: TimeoutError: ratelimited",
    ):
        search(KUROKO, "kuroko_tetsuya", config)
    assert wanted_count(config) == 5


@pytest.mark.parametrize("status", [403, 429])
@pytest.mark.parametrize("outcome", ["no results", "an error"])
@pytest.mark.parametrize("refusing", ["/", "/i.js"])
def test_duckduckgo_refusing_this_client_is_told_from_no_results(
    duckduckgo_start_page: WebServer, status: int, outcome: str, refusing: str
) -> None:
    # ddgs reports a refusal as "No results found.": the adapter makes its requests itself
    from ddgs.exceptions import DDGSException

    nothing = [] if outcome == "no results" else DDGSException("No results found.")
    search = duckduckgo.make_search(lambda config: FakeImageSearch(nothing))
    config = CollectConfig(backend="duckduckgo", limit=3)
    duckduckgo_start_page.add(refusing, Response(status=status, content_type="text/html"))
    with pytest.raises(EngineRefused, match=rf"refused: DuckDuckGo answered HTTP {status} "):
        search(KUROKO, "kuroko_tetsuya", config)
    # asked once, after the search; the results only with the start page's token
    assert duckduckgo_start_page.count("/") == 1
    assert duckduckgo_start_page.count("/i.js") == (refusing == "/i.js")


def test_duckduckgo_with_no_results_and_a_willing_engine_is_an_ordinary_failure(
    duckduckgo_start_page: WebServer,
) -> None:
    from ddgs.exceptions import DDGSException

    empty = duckduckgo.make_search(lambda config: FakeImageSearch([]))
    config = CollectConfig(backend="duckduckgo", limit=3)
    assert empty(KUROKO, "kuroko_tetsuya", config) == []
    failing = duckduckgo.make_search(lambda c: FakeImageSearch(DDGSException("No results found.")))
    with pytest.raises(SearchError, match="No results found") as error:
        failing(KUROKO, "kuroko_tetsuya", config)
    assert not isinstance(error.value, EngineRefused)


def test_default_duckduckgo_client_is_the_real_ddgs() -> None:
    from ddgs.ddgs import DDGS  # the package root exports a lazy proxy class

    assert isinstance(duckduckgo.default_client(CollectConfig(backend="duckduckgo")), DDGS)


def test_get_backend_by_name(tmp_path: Path) -> None:
    assert get_backend(CollectConfig(backend="google")) is google.search
    assert get_backend(CollectConfig(backend="duckduckgo")) is duckduckgo.search
    assert get_backend(folder_config(tmp_path)) is folder.search
    assert get_backend(CollectConfig(backend="urls", urls="u.csv")) is urls.search


# --- the collect stage with a missing folder ----------------------------------------


@pytest.mark.slow  # a Prefect server for the session, and a stage process
def test_collect_stage_records_a_missing_character_folder_without_traceback(
    tmp_path: Path, prefect_api: dict[str, str]
) -> None:
    import csv

    import yaml

    (tmp_path / "import" / "alice").mkdir(parents=True)
    (tmp_path / "import" / "alice" / "1.jpg").write_bytes(jpeg(1))
    params = {
        "characters": [{"name": "Alice"}, {"name": "Bob"}],
        "collect": {"backend": "folder", "folder": "import"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    process = run_stage_flow("collect", tmp_path, prefect_api)
    output = process.stdout + process.stderr
    assert process.returncode == 0, output
    assert "Traceback" not in output
    assert "Bob: recorded as a reject: folder backend: no directory for 'Bob'" in output
    assert "collect: 1 of 2 characters done" in output  # progress in the terminal
    assert "collect: 2 of 2 characters done" in output
    with (tmp_path / "data" / "raw" / "rejects.csv").open(newline="", encoding="utf-8") as handle:
        (reject,) = list(csv.DictReader(handle))
    assert reject["character"] == "Bob" and "no directory for 'Bob'" in reject["reason"]


# --- offline: one preflight, one line -------------------------------------------------


def closed_port() -> int:
    from tests.support.processes import free_port

    return free_port()  # nothing listens there once the probe socket is closed


def test_an_unreachable_search_engine_is_one_clear_error(monkeypatch) -> None:
    from anime_face_id.errors import StageError
    from anime_face_id.sources.reachability import check_search_reachable

    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(variable, raising=False)
    port = closed_port()
    config = CollectConfig(backend="google", search_url=f"http://127.0.0.1:{port}/s?q={{query}}")
    with pytest.raises(StageError) as refused:
        check_search_reachable(config)
    message = str(refused.value)
    assert f"127.0.0.1:{port}" in message and "backend: folder or urls" in message
    assert "\n" not in message

    unresolved = CollectConfig(backend="google", search_url="https://no-such-host.invalid/{query}")
    with pytest.raises(
        StageError, match=re.escape("the name no-such-host.invalid does not resolve")
    ):
        check_search_reachable(unresolved)


def test_the_preflight_goes_through_the_proxy_the_environment_names(monkeypatch) -> None:
    from anime_face_id.errors import StageError
    from anime_face_id.sources.reachability import check_search_reachable

    port = closed_port()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(StageError, match=re.escape(f"through the proxy 127.0.0.1:{port}")):
        check_search_reachable(CollectConfig(backend="duckduckgo"))


@contextlib.contextmanager
def local_proxy(status: int):
    """An HTTP proxy on 127.0.0.1 answering every CONNECT with ``status`` (then closing)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Proxy(BaseHTTPRequestHandler):
        def do_CONNECT(self) -> None:
            self.send_response(status)
            self.end_headers()
            self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_proxy_that_refuses_the_way_to_the_engine_is_one_clear_error(monkeypatch) -> None:
    """A corporate proxy answers 403 to CONNECT: the connection to the proxy itself works,
    so only asking it for the engine shows the block."""
    from anime_face_id.errors import StageError
    from anime_face_id.sources.reachability import check_search_reachable

    for variable in ("NO_PROXY", "no_proxy", "https_proxy"):
        monkeypatch.delenv(variable, raising=False)
    config = CollectConfig(backend="google", search_url="https://search.example/{query}")
    with local_proxy(403) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        with pytest.raises(StageError) as refused:
            check_search_reachable(config)
    message = str(refused.value)
    assert f"through the proxy {proxy.removeprefix('http://')}" in message, message
    assert "the proxy answered 403" in message and "\n" not in message
    with local_proxy(200) as proxy:  # opens the way: what lies past it is not its answer
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        check_search_reachable(config)


def test_a_listening_search_engine_and_offline_backends_pass(tmp_path: Path) -> None:
    import socket

    from anime_face_id.sources.reachability import check_search_reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_search_reachable(
            CollectConfig(backend="google", search_url=f"http://127.0.0.1:{port}/?q={{query}}")
        )
    check_search_reachable(folder_config(tmp_path))  # searches nothing: nothing to check
    check_search_reachable(CollectConfig(backend="urls", urls="u.csv"))


@pytest.mark.slow  # a Prefect server for the session, and a stage process
def test_collect_stage_offline_fails_in_one_line_and_records_nothing(
    tmp_path: Path, prefect_api: dict[str, str]
) -> None:
    import yaml

    port = closed_port()
    params = {
        "characters": [{"name": "Alice"}, {"name": "Bob"}],
        "collect": {"backend": "google", "search_url": f"http://127.0.0.1:{port}/s?q={{query}}"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    process = run_stage_flow("collect", tmp_path, prefect_api)
    output = process.stdout + process.stderr
    assert process.returncode != 0, output
    assert "Traceback" not in output
    assert output.count("cannot reach its search engine") == 1, output  # one line, once
    assert "search-" not in output  # no search task ran, so none was retried
    assert not list((tmp_path / "data" / "raw").glob("*/_done.json"))


@pytest.mark.slow
@pytest.mark.browser
def test_collect_stage_stops_at_the_first_refused_search_in_one_line(
    tmp_path: Path, prefect_api: dict[str, str], web_server: WebServer
) -> None:
    import yaml

    web_server.add("/search", Response(status=429, body=SORRY_PAGE, content_type="text/html"))
    params = {
        "characters": [{"name": f"Character {index}"} for index in range(10)],
        "collect": {
            "backend": "google",
            "search_url": web_server.url("/search?q={query}"),
            "chromedriver": CHROMEDRIVER,
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    process = run_stage_flow("collect", tmp_path, prefect_api)
    output = process.stdout + process.stderr
    assert process.returncode != 0, output
    assert "Traceback" not in output
    assert output.count("unusual traffic") == 1, output  # said once, as the last word
    assert output.rstrip().splitlines()[-1].startswith("collect stopped: google search for")
    assert "recorded as a reject" not in output
    # not retried, and not asked for every character: the two searches in flight when the
    # first was refused, and at most one more per worker started before the stop
    assert 1 <= web_server.count("/search") <= 4, web_server.counts()
    assert not list((tmp_path / "data" / "raw").glob("*/_done.json"))
    assert not (tmp_path / "data" / "raw" / "manifest.csv").exists()


@pytest.mark.slow
def test_collect_stage_with_nothing_for_anyone_fails(
    tmp_path: Path, prefect_api: dict[str, str]
) -> None:
    import yaml

    (tmp_path / "import").mkdir()
    params = {
        "characters": [{"name": "Alice"}, {"name": "Bob"}],
        "collect": {"backend": "folder", "folder": "import"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    process = run_stage_flow("collect", tmp_path, prefect_api)
    output = process.stdout + process.stderr
    assert process.returncode != 0, output
    assert "Traceback" not in output
    assert "collect obtained no image for any of the 2 character(s): search failed (2)" in output
