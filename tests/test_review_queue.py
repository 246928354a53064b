"""The review app's logic without Streamlit: order, flags, counts, pages, cache, writes.

``make_review_project`` (also used by the AppTest and browser tests) writes a small
project: drawn "faces" in one hair colour per character, raw images with and without a
face, manifests written with the layout columns, and optionally a planted outlier (a crop
of another colour among Alice's) and one picture filed under two characters.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from anime_face_id import layout, suspicion
from anime_face_id import review_queue as rq
from anime_face_id.config import Params, load_params
from anime_face_id.decisions import append_decisions, read_decisions
from anime_face_id.fileio import TMP_PREFIX, atomic_write_bytes, read_csv, write_csv
from anime_face_id.imaging import phash
from anime_face_id.review_plan import plan_review
from anime_face_id.slugs import assign_slugs

NAMES = ("Alice Liddell", "Bob Builder", "Carol")
HAIR = {"Alice Liddell": (200, 40, 40), "Bob Builder": (40, 60, 200), "Carol": (40, 170, 60)}
CROP_SIDE = 64
RAW_SIZE = (160, 120)  # width, height
IMAGE_SIZE = 64  # network input for the suspicion features: small keeps the tests quick


def face_drawing(rng: np.random.Generator, hair: tuple[int, int, int]) -> np.ndarray:
    """A crude drawn face: hair disc, skin oval, eyes, a few strands, pixel noise."""
    size = CROP_SIDE
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(215, 256, 3)))
    draw = ImageDraw.Draw(image)
    cx, cy = (int(v) for v in rng.integers(size * 0.35, size * 0.65, 2))
    radius = int(rng.integers(size * 0.3, size * 0.42))
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=hair)
    face = int(radius * 0.7)
    draw.ellipse(
        (cx - face, cy - face + radius // 4, cx + face, cy + face + radius // 4),
        fill=(250, 220, 200),
    )
    for eye_x in (cx - face // 2, cx + face // 3):
        eye_y = cy + radius // 5 + int(rng.integers(-2, 3))
        draw.ellipse(
            (eye_x - 3, eye_y - 4, eye_x + 3, eye_y + 4), fill=tuple(v * 6 // 10 for v in hair)
        )
    for _ in range(int(rng.integers(2, 5))):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, 4))
        draw.line((x0, y0, x1, y1), fill=hair, width=int(rng.integers(2, 5)))
    noisy = np.asarray(image).astype(np.int16) + rng.integers(-8, 9, (size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def other_colour(rng: np.random.Generator) -> np.ndarray:
    """A crop that does not belong: another hair colour on a dark, inverted palette."""
    return (255 - face_drawing(rng, (40, 60, 200))) // 2


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class ReviewProject:
    root: Path
    slugs: dict[str, str]
    raw: list[dict] = field(default_factory=list)
    faces: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    outlier: str = ""  # Alice's crop of another colour
    duplicates: tuple[str, ...] = ()  # (Bob's crop, Carol's copy of it)

    def params(self) -> Params:
        return load_params(self.root / "params.yaml")

    def crops_of(self, name: str) -> list[str]:
        return [row["path"] for row in self.faces if row["character"] == name]

    def no_face_raw(self, name: str) -> str:
        return next(row["source"] for row in self.rejects if row["character"] == name)

    def decisions(self) -> list[dict[str, str]]:
        path = self.root / layout.DECISIONS
        return read_csv(path, layout.DECISION_COLUMNS) if path.exists() else []

    def decide(self, *rows: dict) -> None:
        append_decisions(self.root / layout.DECISIONS, rows)

    def add_raw(self, name: str, pixels: np.ndarray) -> dict:
        data = png_bytes(pixels)
        sha = hashlib.sha256(data).hexdigest()
        path = f"{layout.RAW_DIR.as_posix()}/{self.slugs[name]}/{sha}.png"
        atomic_write_bytes(self.root / path, data)
        row = {
            "character": name, "slug": self.slugs[name], "path": path,
            "url": f"file:///{self.slugs[name]}/{len(self.raw)}.png", "sha256": sha,
            "phash": phash(Image.fromarray(pixels)), "width": pixels.shape[1],
            "height": pixels.shape[0], "format": "PNG", "backend": "folder", "query": name,
            "fetched_at": "2024-05-01T00:00:00+00:00",
        }  # fmt: skip
        self.raw.append(row)
        return row

    def add_face(self, raw: dict, pixels: np.ndarray, index: int) -> str:
        path = f"{layout.FACES_DIR.as_posix()}/{raw['slug']}/{raw['sha256'][:16]}_{index}.png"
        atomic_write_bytes(self.root / path, png_bytes(pixels))
        self.faces.append({
            "character": raw["character"], "slug": raw["slug"], "path": path,
            "source": raw["path"], "source_sha256": raw["sha256"],
            "x": 10 + 8 * index, "y": 10, "w": 40, "h": 40, "crop_x": 0, "crop_y": 0,
            "crop_side": 60, "detector": "lbp", "score": "",
            "phash": phash(Image.fromarray(pixels)), "source_phash": raw["phash"],
        })  # fmt: skip
        return path

    def write_manifests(self) -> None:
        write_csv(self.root / layout.RAW_MANIFEST, layout.RAW_COLUMNS, self.raw)
        write_csv(self.root / layout.FACES_MANIFEST, layout.FACE_COLUMNS, self.faces)
        write_csv(self.root / layout.FACES_REJECTS, layout.FACE_REJECT_COLUMNS, self.rejects)


def raw_picture(rng: np.random.Generator, crop: np.ndarray | None) -> np.ndarray:
    width, height = RAW_SIZE
    picture = rng.integers(180, 230, (height, width, 3), dtype=np.uint8)
    if crop is not None:
        picture[20 : 20 + CROP_SIDE, 40 : 40 + CROP_SIDE] = crop
    return picture


def write_params(root: Path, page_size: int) -> None:
    params = {
        "characters": [{"name": name} for name in NAMES],
        "crop": {"detector": "none", "margin": 0.2, "size": 64},
        "review": {"require_complete": False, "app": {"page_size": page_size}},
        "train": {"image_size": IMAGE_SIZE},
    }
    atomic_write_bytes(root / "params.yaml", yaml.safe_dump(params, sort_keys=False).encode())


def make_review_project(
    root: Path, crops_per_character: int = 6, page_size: int = 48, seed: int = 0
) -> ReviewProject:
    rng = np.random.default_rng(seed)
    project = ReviewProject(root, assign_slugs(list(NAMES)))
    write_params(root, page_size)
    drawings = {
        name: [face_drawing(rng, HAIR[name]) for _ in range(crops_per_character)] for name in NAMES
    }
    drawings["Alice Liddell"].append(other_colour(rng))  # the planted outlier, last
    drawings["Carol"].append(drawings["Bob Builder"][0])  # one picture, two characters
    for name in NAMES:
        paths = [
            project.add_face(project.add_raw(name, raw_picture(rng, drawing)), drawing, 0)
            for drawing in drawings[name]
        ]
        blank = project.add_raw(name, raw_picture(rng, None))
        project.rejects.append(
            {
                "character": name,
                "slug": blank["slug"],
                "source": blank["path"],
                "reason": "no face detected",
            }
        )
        if name == "Alice Liddell":
            project.outlier = paths[-1]
    project.duplicates = (project.crops_of("Bob Builder")[0], project.crops_of("Carol")[-1])
    project.write_manifests()
    return project


@pytest.fixture
def project(tmp_path: Path) -> ReviewProject:
    return make_review_project(tmp_path)


@pytest.fixture(scope="module")
def features() -> suspicion.Features:
    """The ImageNet backbone, loaded once for the module (it takes about a second)."""
    return suspicion.imagenet_spec(IMAGE_SIZE).load()


def embed(project: ReviewProject, name: str, features) -> suspicion.Embeddings:
    spec = suspicion.imagenet_spec(IMAGE_SIZE)
    return suspicion.embed_files(project.root, project.crops_of(name), spec, features=features)


# ---------------------------------------------------------------- ordering


def test_planted_outlier_of_another_colour_comes_first(project, features):
    state = rq.load_state(project.root, project.params())
    queue = rq.build_queue(state, "Alice Liddell", embed(project, "Alice Liddell", features))

    assert queue[0].crop.path == project.outlier
    distances = [item.distance for item in queue]
    assert all(d is not None for d in distances)
    assert distances == sorted(distances, reverse=True)
    assert distances[0] > 1.5 * distances[1]  # clearly apart, not a coin toss
    assert {item.crop.path for item in queue} == set(project.crops_of("Alice Liddell"))


def test_duplicate_across_characters_flags_both_and_comes_first(project):
    bob_crop, carol_copy = project.duplicates
    state = rq.load_state(project.root, project.params())

    flagged = rq.duplicate_crops(state)

    assert {path: [c.path for c in crops] for path, crops in flagged.items()} == {
        bob_crop: [carol_copy],
        carol_copy: [bob_crop],
    }
    # Without embeddings the flag alone decides the order.
    assert rq.build_queue(state, "Carol")[0].crop.path == carol_copy
    assert rq.build_queue(state, "Bob Builder")[0].crop.path == bob_crop


def test_duplicate_flag_clears_once_resolved(project):
    bob_crop, carol_copy = project.duplicates
    project.decide({"path": carol_copy, "decision": "relabel", "character": "Bob Builder"})
    assert rq.duplicate_crops(rq.load_state(project.root, project.params())) == {}

    project.decide({"path": carol_copy, "decision": "accept"})  # filed under Carol again
    assert set(rq.duplicate_crops(rq.load_state(project.root, project.params()))) == {
        bob_crop,
        carol_copy,
    }
    project.decide({"path": bob_crop, "decision": "reject"})
    assert rq.duplicate_crops(rq.load_state(project.root, project.params())) == {}


def test_cross_character_duplicates_threshold_and_bad_hashes():
    base = 0x0F0F_0F0F_0F0F_0F0F
    entries = [
        ("a1", "A", f"{base:016x}"),
        ("b1", "B", f"{base ^ 0b111:016x}"),  # 3 bits away
        ("b2", "B", f"{base ^ 0b11111:016x}"),  # 5 bits away
        ("a2", "A", f"{base:016x}"),  # same character: never a conflict
        ("c1", "C", "not-a-hash"),
    ]
    found = suspicion.cross_character_duplicates(entries, max_distance=4, block=2)
    assert {k: sorted(v) for k, v in found.items()} == {
        "a1": ["b1"],
        "a2": ["b1"],
        "b1": ["a1", "a2"],
    }


def test_unreadable_crop_is_recorded_and_listed_first(project, features):
    broken = project.crops_of("Bob Builder")[3]
    (project.root / broken).write_bytes(b"<html>not a picture</html>")
    state = rq.load_state(project.root, project.params())

    embeddings = embed(project, "Bob Builder", features)
    queue = rq.build_queue(state, "Bob Builder", embeddings)

    assert embeddings.failed == {broken: "not an image: HTML/XML document"}
    assert (queue[0].crop.path, queue[0].problem) == (broken, "not an image: HTML/XML document")
    assert queue[0].distance is None


def test_centroid_distances_resist_outliers():
    rng = np.random.default_rng(1)
    bulk = rng.normal(size=(18, 8)) * 0.05 + np.eye(8)[0]
    outliers = np.eye(8)[[1, 2]]
    distances = suspicion.centroid_distances(np.vstack([bulk, outliers]))
    assert set(np.argsort(distances)[-2:]) == {18, 19}
    assert distances[:18].max() < 0.05  # the centre sits on the bulk, not between


# ---------------------------------------------------------------- counts


def test_counts_follow_the_decisions_like_the_review_stage(project):
    alice = project.crops_of("Alice Liddell")
    project.decide(
        {"path": alice[0], "decision": "accept"},
        {"path": alice[1], "decision": "reject"},
        {"path": alice[2], "decision": "relabel", "character": "Bob Builder"},
        {"path": alice[3], "decision": "relabel", "character": "Alice Liddell"},  # = accept
        {"path": alice[4], "decision": "relabel", "character": "Nobody Listed"},  # pending
        {"path": alice[5], "decision": "reject"},
        {"path": alice[5], "decision": "accept"},  # the latest row wins
        {"path": project.no_face_raw("Alice Liddell"), "decision": "box", "box": (5, 6, 30, 30)},
    )
    state = rq.load_state(project.root, project.params())

    alice_counts = state.counts("Alice Liddell")
    assert alice_counts == rq.Counts(
        total=7, pending=2, accepted=3, rejected=1, relabelled_out=1, relabelled_in=0, manual=1
    )
    assert state.counts("Bob Builder").relabelled_in == 1
    assert state.counts("Carol") == rq.Counts(total=7, pending=7)

    planned = plan_review(project.root, project.params()).counts["alice_liddell"]
    assert (planned["pending"], planned["accepted"], planned["rejected"]) == (2, 3, 1)
    assert (planned["relabelled_out"], planned["manual"]) == (1, 1)
    by_path = {crop.path: crop for crop in state.crops}
    assert (by_path[alice[2]].status, by_path[alice[2]].target) == ("relabelled", "Bob Builder")


def test_missing_face_manifest_says_run_dvc_repro(tmp_path):
    write_params(tmp_path, 48)
    with pytest.raises(rq.FacesNotReady, match=r"run `.venv/bin/dvc repro` first"):
        rq.load_state(tmp_path, load_params(tmp_path / "params.yaml"))


# ---------------------------------------------------------------- pages


def test_pagination_covers_every_item_once():
    items = list(range(101))
    assert [rq.page_count(n, 48) for n in (0, 1, 48, 49, 96, 97)] == [1, 1, 1, 2, 2, 3]
    pages = [rq.page_items(items, page, 48) for page in range(1, rq.page_count(101, 48) + 1)]
    assert [len(page) for page in pages] == [48, 48, 5]
    assert [item for page in pages for item in page] == items
    assert rq.page_items(items, 99, 48) == items[96:]  # past the end: the last page
    assert rq.page_items(items, 0, 48) == items[:48]
    assert rq.page_items([], 1, 48) == []


def test_filter_by_status(project):
    bob = project.crops_of("Bob Builder")
    project.decide({"path": bob[1], "decision": "reject"})
    items = rq.build_queue(rq.load_state(project.root, project.params()), "Bob Builder")
    assert [item.crop.path for item in rq.filter_items(items, "rejected")] == [bob[1]]
    assert len(rq.filter_items(items, "pending")) == len(bob) - 1
    assert rq.filter_items(items, "all") == items
    with pytest.raises(ValueError, match="unknown filter"):
        rq.filter_items(items, "maybe")


# ---------------------------------------------------------------- embedding cache


def test_embedding_cache_is_reused_and_refreshed_per_file(project, features):
    spec = suspicion.imagenet_spec(IMAGE_SIZE)
    paths = project.crops_of("Carol")
    calls: list[int] = []

    def count_and_encode(batch):
        calls.append(len(batch))
        return features.encode(batch)

    counting = suspicion.Features(count_and_encode, IMAGE_SIZE)
    first = suspicion.embed_files(project.root, paths, spec, features=counting)
    assert (first.computed, sum(calls)) == (len(paths), len(paths))
    cache_file = project.root / suspicion.CACHE_DIR / f"embeddings-{spec.id}.npz"
    assert cache_file.is_file()

    def must_not_load():
        raise AssertionError("the encoder was loaded although everything is cached")

    lazy = suspicion.FeatureSpec(spec.id, spec.description, must_not_load)
    second = suspicion.embed_files(project.root, paths, lazy)
    assert second.computed == 0
    for path in paths:
        np.testing.assert_array_equal(second.vectors[path], first.vectors[path])

    changed = project.root / paths[0]
    changed.write_bytes(png_bytes(face_drawing(np.random.default_rng(9), (0, 0, 0))))
    os.utime(changed, ns=(1, 1))  # a different mtime whatever the clock's resolution
    calls.clear()
    third = suspicion.embed_files(project.root, paths, spec, features=counting)
    assert (third.computed, sum(calls)) == (1, 1)
    assert not np.allclose(third.vectors[paths[0]], first.vectors[paths[0]])
    assert not list(cache_file.parent.glob(f"{TMP_PREFIX}*"))


def test_damaged_cache_is_recomputed(project, features):
    spec = suspicion.imagenet_spec(IMAGE_SIZE)
    cache_file = project.root / suspicion.CACHE_DIR / f"embeddings-{spec.id}.npz"
    atomic_write_bytes(cache_file, b"garbage")
    paths = project.crops_of("Carol")[:2]
    result = suspicion.embed_files(project.root, paths, spec, features=features)
    assert result.computed == 2 and set(result.vectors) == set(paths)


def test_trained_embedder_is_used_when_present_and_unusable_one_is_reported(project):
    checkpoint = pytest.importorskip("anime_face_id.checkpoint")
    from anime_face_id.config import TrainConfig
    from anime_face_id.model.embedder import Embedder

    spec, why = suspicion.feature_spec(project.root, IMAGE_SIZE)
    assert spec.id.startswith("imagenet-") and "no trained embedder" in why

    config = TrainConfig(image_size=IMAGE_SIZE, embedding_dim=8, pretrained=False)
    model = Embedder(embedding_dim=8, pretrained=False)
    weights = project.root / layout.EMBEDDER
    checkpoint.save_checkpoint(weights, model, config, list(NAMES), 0, {})
    spec, why = suspicion.feature_spec(project.root, IMAGE_SIZE)
    assert spec.id.startswith("embedder-") and why == "models/embedder.pt"

    paths = project.crops_of("Carol")[:3]
    result = suspicion.embed_files(project.root, paths, spec)
    assert {vector.shape for vector in result.vectors.values()} == {(8,)}  # the trained head
    assert (project.root / suspicion.CACHE_DIR / f"embeddings-{spec.id}.npz").is_file()

    weights.write_bytes(b"not a checkpoint")
    spec, _ = suspicion.feature_spec(project.root, IMAGE_SIZE)
    with pytest.raises(suspicion.FeaturesUnavailable, match=r"cannot load embedder\.pt"):
        suspicion.embed_files(project.root, paths, spec)


# ---------------------------------------------------------------- writes


def test_accept_rest_accepts_only_pending_crops(project):
    carol = project.crops_of("Carol")
    project.decide(
        {"path": carol[0], "decision": "reject"},
        {"path": carol[1], "decision": "relabel", "character": "Bob Builder"},
    )
    assert rq.accept_rest(project.root, project.params(), "Carol") == len(carol) - 2

    rows = project.decisions()
    accepted = [row["path"] for row in rows if row["decision"] == "accept"]
    assert sorted(accepted) == sorted(carol[2:])
    assert {row["note"] for row in rows[2:]} == {"review app: accept the rest"}
    state = rq.load_state(project.root, project.params())
    assert state.counts("Carol").pending == 0 and state.counts("Alice Liddell").pending == 7
    assert rq.accept_rest(project.root, project.params(), "Carol") == 0
    assert len(project.decisions()) == len(rows)


def test_accept_rest_keeps_a_decision_another_tab_made_while_it_ran(project, monkeypatch):
    carol = project.crops_of("Carol")
    load_state = rq.load_state

    def another_tab_rejects_meanwhile(root, params):
        state = load_state(root, params)  # carol[0] is pending in what accept_rest saw
        rq.record(root, carol[0], "reject")
        return state

    monkeypatch.setattr(rq, "load_state", another_tab_rejects_meanwhile)
    assert rq.accept_rest(project.root, project.params(), "Carol") == len(carol) - 1

    monkeypatch.setattr(rq, "load_state", load_state)
    state = rq.load_state(project.root, project.params())
    status = {crop.path: crop.status for crop in state.crops_of("Carol")}
    assert status[carol[0]] == "rejected"
    assert {status[path] for path in carol[1:]} == {"accepted"}


def test_review_sign_off_keeps_a_decision_made_while_it_ran(project, monkeypatch):
    from anime_face_id import review

    carol = project.crops_of("Carol")
    plan_review = review.plan_review

    def reviewer_accepts_then_app_rejects(root, params):
        plan = plan_review(root, params)
        rq.record(root, carol[0], "reject")
        return plan

    monkeypatch.setattr(review, "plan_review", reviewer_accepts_then_app_rejects)
    pending = len(plan_review(project.root, project.params()).pending)
    assert review.accept_pending(project.root, project.params(), "sign-off") == pending - 1
    latest = {row["path"]: row["decision"] for row in project.decisions()}
    assert latest[carol[0]] == "reject"


def test_record_appends_one_row_per_decision(project):
    crop = project.crops_of("Bob Builder")[2]
    rq.record(project.root, crop, "reject")
    rq.record(project.root, crop, "relabel", "Carol")
    rows = project.decisions()
    assert [(r["path"], r["decision"], r["character"], r["note"]) for r in rows] == [
        (crop, "reject", "", "review app"),
        (crop, "relabel", "Carol", "review app"),
    ]
    assert all(row["time"] for row in rows)


def test_raw_images_without_a_face_come_first_and_take_boxes(project):
    state = rq.load_state(project.root, project.params())
    images = rq.raw_images(state, "Bob Builder")
    blank = project.no_face_raw("Bob Builder")
    assert images[0].path == blank and images[0].no_face and not images[0].detected
    assert all(not image.no_face for image in images[1:])
    assert len(images) == len(project.crops_of("Bob Builder")) + 1
    assert images[1].detected == ((10, 10, 40, 40),)

    with pytest.raises(ValueError, match="does not fit"):
        rq.add_box(project.root, images[0], (150, 10, 20, 20), "Bob Builder")
    assert project.decisions() == []

    rq.add_box(project.root, images[0], (30, 20, 50, 40), "Carol")
    rows = project.decisions()
    assert [(r["path"], r["decision"], r["box"], r["character"]) for r in rows] == [
        (blank, "box", "30,20,50,40", "Carol")
    ]
    state = rq.load_state(project.root, project.params())
    boxed = rq.raw_images(state, "Bob Builder")[0]
    assert boxed.manual == (((30, 20, 50, 40), "Carol"),)
    assert state.counts("Carol").manual == 1

    rq.withdraw_box(project.root, boxed, (30, 20, 50, 40))
    state = rq.load_state(project.root, project.params())
    assert rq.raw_images(state, "Bob Builder")[0].manual == ()
    assert read_decisions(project.root / layout.DECISIONS).manual_boxes() == []


def test_unreadable_raw_images_are_not_offered_for_boxes(project):
    bad = project.add_raw("Carol", raw_picture(np.random.default_rng(2), None))
    project.rejects.append(
        {
            "character": "Carol",
            "slug": "carol",
            "source": bad["path"],
            "reason": "truncated image: x",
        }
    )
    project.write_manifests()
    paths = [
        image.path
        for image in rq.raw_images(rq.load_state(project.root, project.params()), "Carol")
    ]
    assert bad["path"] not in paths and project.no_face_raw("Carol") == paths[0]


def test_previews_draw_the_boxes(project):
    state = rq.load_state(project.root, project.params())
    image = rq.raw_images(state, "Alice Liddell")[1]  # one with a detected face
    picture = np.asarray(rq.box_preview(project.root, image, (100, 60, 30, 30)))
    assert tuple(picture[10, 20]) == rq.COLOURS["detected"]  # top edge of the 10,10,40,40 box
    assert tuple(picture[60, 110]) == rq.COLOURS["proposed"]
    crop = rq.crop_preview(project.root, image, (40, 20, 64, 64), margin=0.0, size=32)
    assert crop.size == (32, 32)
    assert Image.open(io.BytesIO(rq.thumbnail(project.root / project.outlier, 40))).size == (40, 40)
