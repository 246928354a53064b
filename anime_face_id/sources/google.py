"""Google image search through the ``google_images_download`` library.

The library drives Chromium through Selenium and calls ``sys.exit()`` when the driver
cannot start, so it runs in a child process (``google_worker``) in a session of its own:
whatever it does (exit, hang, crash, leave a browser behind) the caller gets either a list
of URLs or a SearchError, and the whole process group is killed afterwards, or at once
when the run is stopped (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import anime_face_id
from anime_face_id import interrupt
from anime_face_id.config import Character, CollectConfig
from anime_face_id.errors import EngineRefused
from anime_face_id.sources.base import SearchError, is_web_url, unique, wanted_count

WORKER_MODULE = "anime_face_id.sources.google_worker"
RESULT_PREFIX = "ANIME_FACE_ID_RESULT "
OUTPUT_LINES_IN_ERRORS = 6
# What Google shows instead of results when it will not search for this client, as the
# browser sees it (lower case): its "unusual traffic" page (at /sorry/, HTTP 429, with a
# reCAPTCHA), and the cookie consent wall it puts before the first search in some countries.
REFUSAL_PAGES = (
    (
        ("unusual traffic", 'id="captcha-form"', "/sorry/index"),
        "its 'unusual traffic' page, which asks for a captcha: searches from this network "
        "look automated to Google",
    ),
    (
        ('action="https://consent.google.com/save"', "before you continue to google"),
        "its cookie consent page ('Before you continue'), which a headless browser cannot answer",
    ),
)


def library_arguments(character: Character, config: CollectConfig, chromedriver: str) -> dict:
    """Arguments for ``googleimagesdownload().download``: URLs only, nothing written."""
    arguments: dict[str, object] = {
        "limit": wanted_count(config),
        "no_download": True,
        "silent_mode": True,
        "chromedriver": chromedriver,
    }
    if config.search_url:
        # not str.format: other braces in the address ("&tbs={isz:l}") are literal text;
        # "{{" and "}}", which str.format once required for them, still mean "{" and "}"
        url = config.search_url.replace("{query}", quote(character.search_query))
        arguments["url"] = url.replace("{{", "{").replace("}}", "}")
    else:
        # the library splits keywords on commas into separate searches
        arguments["keywords"] = " ".join(character.search_query.replace(",", " ").split())
    return arguments


def find_chromedriver(config: CollectConfig) -> str:
    chromedriver = config.chromedriver or shutil.which("chromedriver")
    if not chromedriver:
        # without a path the library would try to download a driver from the internet
        raise SearchError(
            "google backend: chromedriver not found (install chromium-driver or set collect.chromedriver)"
        )
    return chromedriver


def search(
    character: Character, slug: str, config: CollectConfig, root: Path | None = None
) -> list[str]:
    arguments = library_arguments(character, config, find_chromedriver(config))
    what = f"google search for {character.search_query!r}"
    urls = run_worker(arguments, config.search_timeout_s, what)
    return unique(url for url in urls if is_web_url(url))[: wanted_count(config)]


def _worker_environment() -> dict[str, str]:
    environment = dict(os.environ)
    package_parent = str(Path(anime_face_id.__file__).resolve().parents[1])
    existing = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = package_parent + (os.pathsep + existing if existing else "")
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the worker's process group: the worker, chromedriver and the browser."""
    with contextlib.suppress(ProcessLookupError, PermissionError):  # all already exited
        os.killpg(process.pid, signal.SIGKILL)


def _drain(process: subprocess.Popen) -> tuple[str, str]:
    """What a killed worker had written; bounded, in case a survivor holds the pipes."""
    try:
        return process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        return "", "(output unavailable: a process of the search kept its pipes open)"


def _tail(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-OUTPUT_LINES_IN_ERRORS:]) or "(no output)"


def run_worker(arguments: dict, timeout_s: float, what: str) -> list[str]:
    request = json.dumps({"arguments": arguments})
    interrupt.raise_if_stopping()  # no browser started for a run already stopping
    # a browser killed mid-write may leave files behind: no cleanup error replaces the
    # search's own outcome
    with tempfile.TemporaryDirectory(
        prefix="anime-face-id-google-", ignore_cleanup_errors=True
    ) as scratch:
        process = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=scratch,  # the library may write 'downloads/' or 'logs/' in its cwd
            env=_worker_environment(),
            start_new_session=True,
            text=True,
        )
        try:
            # The worker's session does not get the terminal's Ctrl-C, and the stage may
            # leave before this thread wakes: a stop kills the browser at once.
            with interrupt.on_stop(lambda: _kill_group(process)):
                stdout, stderr = process.communicate(request, timeout=timeout_s)
            interrupt.raise_if_stopping()  # a search cut short is no result
        except subprocess.TimeoutExpired:
            _kill_group(process)
            stdout, stderr = _drain(process)
            raise SearchError(
                f"{what} timed out after {timeout_s:g} s; last output: {_tail(stderr)}"
            ) from None
        finally:
            _kill_group(process)
    return _parse_result(stdout, stderr, process.returncode, what)


def _without_stacktrace(message: str) -> str:
    """chromedriver appends a native stack trace of no use to the reader."""
    return message.split("\nStacktrace:", 1)[0].strip()


def refusal_in(page: str) -> str | None:
    """Why Google showed ``page`` instead of results (see REFUSAL_PAGES), or None."""
    text = page.lower()
    for markers, why in REFUSAL_PAGES:
        if any(marker in text for marker in markers):
            return why
    return None


def _parse_result(stdout: str, stderr: str, returncode: int | None, what: str) -> list[str]:
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise SearchError(
            f"{what} failed: worker exited with status {returncode}; last output: {_tail(stderr)}"
        )
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    if result.get("refused"):
        raise EngineRefused(f"{what} refused: Google answered with {result['refused']}")
    if not result.get("ok"):
        error = _without_stacktrace(str(result.get("error")))
        raise SearchError(f"{what} failed: {error}; last output: {_tail(stderr)}")
    return [str(url) for url in result.get("urls", [])]
