"""The review app end to end: `streamlit run` on 127.0.0.1, driven by Debian's chromium.

A reviewer rejects one crop, relabels another and draws a box on a raw image where the
detector found no face; decisions.csv must hold exactly those three rows and the review
stage must turn them into the curated manifest. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from anime_face_id import layout
from anime_face_id import review_queue as rq
from anime_face_id.fileio import read_csv
from anime_face_id.review import apply_review
from tests.support.browser import chromium_page, streamlit_app, wait_idle
from tests.test_review_queue import ReviewProject, make_review_project

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "review.py"
ARTIFACTS = REPO / "test-artifacts"
TIMEOUT_MS = 30_000


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def project(tmp_path: Path) -> ReviewProject:
    return make_review_project(tmp_path / "project")


@pytest.fixture
def app_url(project: ReviewProject, tmp_path: Path) -> Iterator[str]:
    with streamlit_app(APP, project.root, tmp_path, timeout_s=60) as url:
        yield url


@pytest.fixture
def page(app_url: str):
    with chromium_page(app_url, 1500, 1100, TIMEOUT_MS) as tab:
        yield tab


def button(page, key: str):
    # .first: Streamlit renders a hidden copy of a button's label after the real one (to
    # measure it), so the key's container can hold two <button> elements.
    return page.locator(f".st-key-{key} button").first


def rows_of(project: ReviewProject) -> list[tuple[str, str, str, str]]:
    return [(r["path"], r["decision"], r["character"], r["box"]) for r in project.decisions()]


def choose(page, container: str, option: str) -> None:
    """Pick ``option`` in a selectbox by typing, as a user would: typing opens the list
    reliably, where a first click on an unfocused selectbox may only focus it."""
    field = page.locator(f"{container} input")
    field.click()
    field.fill(option[:3])
    page.get_by_role("option", name=option, exact=True).click()
    wait_idle(page)


def test_reject_relabel_and_box_in_a_real_browser(project, page):
    bob = project.crops_of("Bob Builder")
    relabelled = bob[2]
    blank = project.no_face_raw("Bob Builder")
    outlier_key, relabel_key, raw_key = (
        rq.item_key(p) for p in (project.outlier, relabelled, blank)
    )

    # The app opens on Alice, with the planted outlier first.
    page.locator(f".st-key-card-{outlier_key}").wait_for()
    cards = page.locator('[class*="st-key-card-"]')
    assert f"st-key-card-{outlier_key}" in (cards.first.get_attribute("class") or "")
    button(page, f"reject-{outlier_key}").click()
    wait_until(lambda: len(project.decisions()) == 1, "the reject row")
    wait_idle(page)

    choose(page, ".st-key-character", "Bob Builder")
    page.locator(f".st-key-card-{relabel_key}").wait_for()
    choose(page, f".st-key-relabel-{relabel_key}", "Carol")
    wait_until(lambda: len(project.decisions()) == 2, "the relabel row")
    page.get_by_text("relabelled to Carol").wait_for()
    # A decision changes the counts; the chosen character must stay chosen all the same.
    assert page.locator("h2").first.inner_text().strip() == "Bob Builder"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "review-app.png"), full_page=True)

    page.locator('[data-testid="stSidebar"]').get_by_text("Manual boxes").click()
    for name, value in (("x", 30), ("y", 20), ("w", 60), ("h", 50)):
        field = page.locator(f".st-key-box-{name}-{raw_key} input")
        field.fill(str(value))
        field.press("Enter")
        wait_idle(page)
    button(page, f"save-box-{raw_key}").click()
    wait_until(lambda: len(project.decisions()) == 3, "the box row")
    wait_idle(page)
    page.screenshot(path=str(ARTIFACTS / "review-app-boxes.png"), full_page=True)

    assert rows_of(project) == [
        (project.outlier, "reject", "", ""),
        (relabelled, "relabel", "Carol", ""),
        (blank, "box", "Bob Builder", "30,20,60,50"),
    ]
    assert {row["note"] for row in project.decisions()} == {"review app"}

    # The review stage (pending crops accepted: review.require_complete is false here).
    summary = apply_review(project.root, project.params())
    curated = {
        row["path"]: row
        for row in read_csv(project.root / layout.CURATED_MANIFEST, layout.CURATED_COLUMNS)
    }
    assert project.outlier not in curated
    assert (curated[relabelled]["character"], curated[relabelled]["status"]) == (
        "Carol",
        "relabelled",
    )
    manual = [row for row in curated.values() if row["origin"] == "manual"]
    assert [(row["source"], row["character"], row["status"]) for row in manual] == [
        (blank, "Bob Builder", "manual")
    ]
    assert (project.root / manual[0]["path"]).is_file()
    others = set(curated) - {relabelled, manual[0]["path"]}
    assert {curated[path]["status"] for path in others} == {"pending_accepted"}
    assert len(curated) == len(project.faces) - 1 + 1
    assert summary.pending == len(project.faces) - 2
