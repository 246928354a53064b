"""The identify app end to end: `streamlit run` on 127.0.0.1, driven by Debian's chromium.

A user uploads a picture of three characters (real illustrations side by side): every face
must come back boxed and labelled with its character's name and a score, each with its
nearest training images; an upload that is not a picture must say so. The screenshot goes
to test-artifacts/identify-app.png.

The project is built from real illustrations (../shared) cropped by the crop stage's own
code with the lbp cascade, and an untrained embedder: the uploaded picture's own crops are
in the gallery, so the expected names are known exactly; recognition of unseen pictures is
tested elsewhere (test_cli)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.support.browser import chromium_page, streamlit_app, wait_idle
from tests.test_identify import GROUP, GROUP_PICTURE, illustration_project

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "identify.py"
SCREENSHOT = REPO / "test-artifacts" / "identify-app.png"
TIMEOUT_MS = 60_000


@pytest.fixture
def project(tmp_path: Path, shared_dir: Path, cascade_path: Path) -> Path:
    return illustration_project(tmp_path / "project", shared_dir, cascade_path, per=3)


@pytest.fixture
def app_url(project: Path, tmp_path: Path) -> Iterator[str]:
    with streamlit_app(APP, project, tmp_path, timeout_s=90) as url:
        yield url


@pytest.fixture
def page(app_url: str):
    with chromium_page(app_url, 1300, 1000, TIMEOUT_MS) as tab:
        yield tab


def upload(page, path: Path) -> None:
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(path))
    wait_idle(page)


def test_upload_a_picture_and_see_its_faces_labelled(project, page, tmp_path):
    page.get_by_text("Upload a picture (drag and drop works)").wait_for()
    picture = project / GROUP_PICTURE
    upload(page, picture)

    page.get_by_text(f"3 face(s) in {picture.name}: 3 named, 0 unknown.").wait_for()
    named = set()
    for number in (1, 2, 3):
        card = page.locator(f".st-key-face-{number}")
        heading = card.get_by_role("heading").first.inner_text()
        number_part, name, score = re.fullmatch(r"(\d)\. (.+) · (\d\.\d\d)", heading).groups()
        assert number_part == str(number) and score == "1.00"
        named.add(name)
        card.get_by_text("Nearest training images").wait_for()
        # the crop and at least two neighbours; Streamlit may add images after the caption
        card.locator('[data-testid="stImage"] img').nth(2).wait_for()
    assert named == set(GROUP)
    # every picture on the page has arrived and decoded (none broken)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=stImage] img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    labelled = page.locator('[data-testid="stImage"] img').first
    box = labelled.bounding_box()
    assert box and box["width"] > 600  # the labelled picture, shown large
    page.set_viewport_size({"width": 1300, "height": 2300})  # the whole page in one shot
    wait_idle(page)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # a file that is not a picture gets a clear message, and the app keeps working
    (tmp_path / "notes.png").write_bytes(b"these are notes, not a picture")
    upload(page, tmp_path / "notes.png")
    page.get_by_text("notes.png: not an image: unrecognised format").wait_for()
    expect(page.locator(".st-key-face-1")).to_have_count(0)  # stale cards leave at run end
