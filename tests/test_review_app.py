"""apps/review.py under Streamlit's AppTest: every click lands in decisions.csv at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from anime_face_id import layout
from anime_face_id import review_queue as rq
from anime_face_id.fileio import read_csv, write_csv
from anime_face_id.imaging import load_rgb
from tests.test_review_queue import ReviewProject, make_review_project, write_params

APP = Path(__file__).resolve().parents[1] / "apps" / "review.py"
KEEP = ""  # the relabel selector's "no relabel" option (KEEP in apps/review.py)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ReviewProject:
    monkeypatch.setenv("ANIME_FACE_ID_ROOT", str(tmp_path))
    return make_review_project(tmp_path)


def start() -> AppTest:
    app = AppTest.from_file(str(APP), default_timeout=90)  # the first run embeds crops
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert not app.warning, [w.value for w in app.warning]  # e.g. Session State misuse
    return app


def metrics(app: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}


def decided(project: ReviewProject) -> list[tuple[str, str, str, str]]:
    return [(r["path"], r["decision"], r["character"], r["box"]) for r in project.decisions()]


def test_no_crops_yet_says_run_dvc_repro(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIME_FACE_ID_ROOT", str(tmp_path))
    write_params(tmp_path, 48)
    app = start()
    assert any("run `.venv/bin/dvc repro` first" in info.value for info in app.info)
    assert not app.button and not (tmp_path / "data").exists()


def test_opens_on_the_first_character_most_suspicious_first(project):
    app = start()
    assert app.header[0].value == "Alice Liddell"
    assert metrics(app)["Pending"] == "7"
    first_card = [
        b.key for b in app.button if b.key.startswith("accept-") and b.key != "accept-rest"
    ]
    assert first_card[0] == f"accept-{rq.item_key(project.outlier)}"
    assert len(first_card) == 7
    assert project.decisions() == []  # looking writes nothing


def test_accept_reject_and_relabel_are_saved_on_each_click(project):
    alice = project.crops_of("Alice Liddell")
    app = start()

    app.button(key=f"reject-{rq.item_key(project.outlier)}").click().run()
    assert decided(project) == [(project.outlier, "reject", "", "")]
    assert metrics(app)["Rejected"] == "1"

    app.button(key=f"accept-{rq.item_key(alice[0])}").click().run()
    assert decided(project)[-1] == (alice[0], "accept", "", "")
    assert app.button(key=f"accept-{rq.item_key(alice[0])}").proto.type == "primary"

    relabel = f"relabel-{rq.item_key(alice[1])}"
    app.selectbox(key=relabel).set_value("Bob Builder").run()
    assert decided(project)[-1] == (alice[1], "relabel", "Bob Builder", "")
    assert metrics(app)["Relabelled away"] == "1"
    assert any("relabelled to Bob Builder" in caption.value for caption in app.caption)

    app.selectbox(key=relabel).set_value(KEEP).run()  # "back to Alice Liddell"
    assert decided(project)[-1] == (alice[1], "accept", "", "")
    assert app.selectbox(key=relabel).value == KEEP
    assert len(project.decisions()) == 4
    assert metrics(app)["Pending"] == "4"


def test_accept_the_rest_accepts_every_pending_crop_of_the_character(project):
    alice = project.crops_of("Alice Liddell")
    app = start()
    app.button(key=f"reject-{rq.item_key(project.outlier)}").click().run()

    app.button(key="accept-rest").click().run()

    rows = decided(project)
    assert rows[0] == (project.outlier, "reject", "", "")
    assert sorted(path for path, kind, _, _ in rows[1:] if kind == "accept") == sorted(
        path for path in alice if path != project.outlier
    )
    assert {path for path, *_ in rows} <= set(alice)  # other characters untouched
    assert metrics(app)["Pending"] == "0" and metrics(app)["Rejected"] == "1"
    assert app.button(key="accept-rest").disabled
    assert any("Accepted the 6 pending" in toast.value for toast in app.toast)


def test_manual_box_is_saved_as_a_box_decision(project):
    blank = project.no_face_raw("Bob Builder")
    app = start()
    app.sidebar.selectbox(key="character").set_value("Bob Builder").run()
    app.sidebar.radio(key="view").set_value("Manual boxes").run()
    assert app.selectbox(key="raw-bob_builder").value == blank  # no face found: listed first

    key = rq.item_key(blank)
    app.number_input(key=f"box-w-{key}").set_value(150).run()  # 150 wide from x=40: too wide
    assert any("does not fit" in error.value for error in app.error)
    assert app.button(key=f"save-box-{key}").disabled

    for name, value in (("x", 10), ("y", 12), ("w", 50), ("h", 40)):
        app.number_input(key=f"box-{name}-{key}").set_value(value)
    app.selectbox(key=f"box-who-{key}").set_value("Carol")
    app.run()
    assert not app.error
    app.button(key=f"save-box-{key}").click().run()

    assert decided(project) == [(blank, "box", "Carol", "10,12,50,40")]
    assert any(md.value == "Carol: 10,12,50,40" for md in app.markdown)  # listed as saved
    assert app.selectbox(key="raw-bob_builder").value == blank  # still the same image
    app.button(key=f"remove-{key}-0").click().run()
    assert decided(project)[-1] == (blank, "reject", "", "10,12,50,40")


def test_a_raw_picture_deleted_since_the_crop_stage_is_a_message_not_a_traceback(project):
    blank = project.no_face_raw("Bob Builder")
    (project.root / blank).unlink()
    app = start()
    app.sidebar.selectbox(key="character").set_value("Bob Builder").run()
    app.sidebar.radio(key="view").set_value("Manual boxes").run()
    assert not app.exception, [e.value for e in app.exception]
    assert any(f"Cannot show {blank}: cannot read: file not found" in e.value for e in app.error)


def test_a_raw_picture_without_its_size_in_the_manifest_gets_box_inputs(project):
    blank = project.no_face_raw("Bob Builder")
    manifest = project.root / layout.RAW_MANIFEST
    rows = read_csv(manifest)
    for row in rows:
        if row["path"] == blank:
            row["width"] = row["height"] = ""  # the stage tolerates a manifest without sizes
    write_csv(manifest, list(rows[0]), rows)
    width, height = load_rgb(project.root / blank).size
    app = start()
    app.sidebar.selectbox(key="character").set_value("Bob Builder").run()
    app.sidebar.radio(key="view").set_value("Manual boxes").run()
    assert not app.exception, [e.value for e in app.exception]
    key = rq.item_key(blank)
    assert app.number_input(key=f"box-x-{key}").max == width - 1
    assert app.number_input(key=f"box-h-{key}").max == height


def test_state_comes_from_the_decisions_file(project):
    """A restart, or another tab's click, shows up: the app keeps no state of its own."""
    alice = project.crops_of("Alice Liddell")
    app = start()
    project.decide(  # as another tab would
        {"path": alice[2], "decision": "reject"},
        {"path": alice[3], "decision": "relabel", "character": "Carol"},
    )
    app.run()
    assert metrics(app)["Rejected"] == "1" and metrics(app)["Relabelled away"] == "1"
    assert app.selectbox(key=f"relabel-{rq.item_key(alice[3])}").value == "Carol"
    assert app.button(key=f"reject-{rq.item_key(alice[2])}").proto.type == "primary"

    restarted = start()
    assert metrics(restarted)["Pending"] == "5"


def test_pages_split_a_large_character(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIME_FACE_ID_ROOT", str(tmp_path))
    project = make_review_project(tmp_path, crops_per_character=4, page_size=3)
    app = start()
    pagination = app.pagination[0]
    assert pagination.num_pages == 2  # 5 crops of Alice, 3 per page

    def shown() -> list[str]:
        return [b.key for b in app.button if b.key.startswith("reject-")]

    first = shown()
    pagination.select(2).run()
    second = shown()
    assert (len(first), len(second)) == (3, 2)
    assert {key[len("reject-") :] for key in first + second} == {
        rq.item_key(path) for path in project.crops_of("Alice Liddell")
    }


def test_the_selected_character_stays_selected_after_a_decision(project):
    carol = project.crops_of("Carol")
    app = start()
    app.sidebar.selectbox(key="character").set_value("Carol").run()
    assert app.header[0].value == "Carol"

    app.button(key=f"reject-{rq.item_key(carol[0])}").click().run()
    app.button(key=f"accept-{rq.item_key(carol[1])}").click().run()

    assert app.header[0].value == "Carol"
    assert decided(project) == [(carol[0], "reject", "", ""), (carol[1], "accept", "", "")]


def test_one_by_one_view_walks_the_pending_crops_with_keyboard_shortcuts(project):
    app = start()
    app.sidebar.radio(key="view").set_value("One by one").run()

    def current() -> str:
        keys = [b.key for b in app.button if b.key.startswith("accept-")]
        assert len(keys) == 1
        return keys[0][len("accept-") :]

    assert current() == rq.item_key(project.outlier)  # most suspicious first
    assert app.button(key=f"reject-{current()}").proto.shortcut.lower() == "x"
    app.button(key=f"reject-{current()}").click().run()
    assert decided(project) == [(project.outlier, "reject", "", "")]

    skipped = current()
    app.button(key=f"skip-{skipped}").click().run()
    assert current() != skipped and len(project.decisions()) == 1  # skipping writes nothing


def test_an_unloadable_trained_embedder_falls_back_to_imagenet_features(project):
    pytest.importorskip("anime_face_id.checkpoint")
    weights = project.root / "models" / "embedder.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"not a checkpoint")
    app = AppTest.from_file(str(APP), default_timeout=90)
    app.run()

    assert not app.exception
    assert any("ordering by ImageNet features instead" in w.value for w in app.warning)
    first = next(
        b.key for b in app.button if b.key.startswith("accept-") and b.key != "accept-rest"
    )
    assert first == f"accept-{rq.item_key(project.outlier)}"


def test_an_unreachable_dask_scheduler_makes_the_app_embed_here_and_say_so(project):
    """compute.runner dask with no scheduler listening: the crops are embedded in the app
    (the same order) after one warning, instead of a failed page."""
    import dask
    import yaml

    from tests.support.processes import free_port

    params = yaml.safe_load((project.root / "params.yaml").read_text())
    params["compute"] = {"runner": "dask", "dask_address": f"tcp://127.0.0.1:{free_port()}"}
    (project.root / "params.yaml").write_text(yaml.safe_dump(params))
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        app = AppTest.from_file(str(APP), default_timeout=90)
        app.run()

    assert not app.exception, [e.value for e in app.exception]
    assert any("Dask cluster unreachable" in w.value for w in app.warning)
    first = next(
        b.key for b in app.button if b.key.startswith("accept-") and b.key != "accept-rest"
    )
    assert first == f"accept-{rq.item_key(project.outlier)}"
