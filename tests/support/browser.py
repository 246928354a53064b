"""A Streamlit app started for real on 127.0.0.1 and a page of Debian's headless Chromium
driven by Playwright, for the apps' end-to-end tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.processes import free_port, running_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@contextmanager
def streamlit_app(app: Path, root: Path, workdir: Path, timeout_s: float = 90) -> Iterator[str]:
    """`streamlit run APP -- --root ROOT`; yields its URL."""
    port = free_port()
    command = [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", "127.0.0.1", "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--", "--root", str(root),
    ]  # fmt: skip
    env = {**os.environ, "HOME": str(workdir)}  # no ~/.streamlit of the person running it
    url = f"http://127.0.0.1:{port}"
    log = workdir / "streamlit.log"
    with running_server(
        command, f"{url}/_stcore/health", log, env=env, cwd=workdir, timeout_s=timeout_s
    ):
        yield url


@contextmanager
def chromium_page(url: str, width: int, height: int, timeout_ms: int) -> Iterator[object]:
    """A Playwright page on ``url`` in headless Chromium (skips if it is not installed)."""
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (make system-packages)")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": width, "height": height})
            tab.set_default_timeout(timeout_ms)
            tab.goto(url)
            yield tab
        finally:
            browser.close()


def wait_idle(page) -> None:
    """Until the script run that the last interaction started has finished."""
    page.wait_for_timeout(300)  # the run request leaves the browser asynchronously
    page.wait_for_function(
        "() => document.querySelector('[data-testid=stApp]')"
        "?.getAttribute('data-test-script-state') !== 'running'"
    )
