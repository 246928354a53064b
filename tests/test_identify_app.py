"""apps/identify.py under Streamlit's AppTest: upload a picture, see the faces labelled with
names and scores and the nearest training images; bad uploads get a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from anime_face_id.identify import load_identifier
from anime_face_id.markdown_text import literal
from tests.test_identify import (
    NAMES,
    bad_inputs,
    held_out_pictures,
    params_dict,
    params_for,
    trained_project,
    write_params,
)

pytestmark = pytest.mark.slow  # trains a small model once per session

APP = Path(__file__).resolve().parents[1] / "apps" / "identify.py"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return trained_project(tmp_path_factory)


def start(root: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("ANIME_FACE_ID_ROOT", str(root))
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def upload(app: AppTest, name: str, data: bytes, mime: str = "image/png") -> AppTest:
    app.file_uploader(key="picture").set_value((name, data, mime)).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def test_without_a_model_it_says_what_to_run(tmp_path, monkeypatch):
    write_params(tmp_path, params_dict(NAMES))
    app = start(tmp_path, monkeypatch)
    assert "embedder.pt not found" in app.error[0].value
    assert "dvc repro" in app.info[0].value
    assert not app.get("file_uploader")


def test_an_uploaded_picture_is_labelled_with_names_scores_and_nearest_images(project, monkeypatch):
    name, picture = held_out_pictures(project)[0]
    expected = load_identifier(project, params_for(NAMES)).identify_file(picture).faces[0]
    app = start(project, monkeypatch)
    assert "Upload a picture" in app.info[0].value
    sidebar = app.sidebar.markdown[0].value
    assert f"**{len(NAMES)}** characters" in sidebar and "unknown below similarity" in sidebar

    upload(app, picture.name, picture.read_bytes())
    assert f"1 face(s) in {literal('test_0.png')}" in app.success[0].value  # Markdown-escaped
    verdict = (
        expected.label
        if expected.known
        else f"unknown (closest: {expected.candidates[0].character})"
    )
    assert [h.value for h in app.main.subheader] == [f"1. {verdict} · {expected.score:.2f}"]
    assert expected.candidates[0].character == name  # the right character is the best match
    next_line = [m.value for m in app.markdown if m.value.startswith("Next: ")]
    assert next_line == [
        "Next: " + ", ".join(f"{c.character} {c.score:.2f}" for c in expected.candidates[1:])
    ]
    assert any(c.value == "Nearest training images" for c in app.caption)
    images = app.image
    # the labelled picture, the face crop, and one thumbnail per nearest training image
    assert len(images) == 2 + len(expected.neighbours)
    captions = [image.captions[0] for image in images]
    assert captions[0] == literal(picture.name)
    assert captions[2:] == [f"{n.character} {n.similarity:.2f}" for n in expected.neighbours]


@pytest.mark.parametrize("what", ["text", "truncated", "huge"])
def test_a_bad_upload_gets_its_reason(project, monkeypatch, tmp_path, what):
    path, reason = bad_inputs(tmp_path)[what]
    app = upload(start(project, monkeypatch), f"{what}.png", path.read_bytes())
    assert len(app.error) == 1 and reason in app.error[0].value
    assert app.error[0].value.startswith(f"{literal(what + '.png')}: ")
    assert not app.main.subheader
