"""The crop stage end to end on generated raw data: outputs, rejects, and incremental runs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anime_face_id import layout
from anime_face_id.config import CropConfig
from anime_face_id.crop import (
    crop_all,
    crop_character,
    raw_rows_by_character,
    summary,
    write_crop_outputs,
)
from anime_face_id.crop_index import INDEX_NAME, CropStateError
from anime_face_id.cutting import previous_names
from anime_face_id.errors import StageError
from anime_face_id.faces.boxes import crop_square, square_crop_box
from anime_face_id.faces.detectors import Detection, LbpCascadeDetector, WholeImageDetector
from anime_face_id.fileio import read_csv, write_csv
from anime_face_id.imaging import load_rgb_array, phash
from anime_face_id.layout import NO_FACE

OUTPUTS = (layout.FACES_MANIFEST, layout.FACES_REJECTS)

# ------------------------------------------------------------- building a raw data folder


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def pattern(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A tiny PNG whose header claims 400 million pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


class RawData:
    """A project root with data/raw/<slug>/<sha256>.<ext> files and their manifest."""

    def __init__(self, root: Path):
        self.root = root
        self.rows: list[dict] = []

    def add(
        self,
        character: str,
        data: bytes,
        ext: str = "png",
        sha256: str | None = None,
        path: str | None = None,
    ) -> dict:
        slug = character.lower().replace(" ", "_")
        digest = sha256 or hashlib.sha256(data).hexdigest()
        relative = path or f"data/raw/{slug}/{hashlib.sha256(data).hexdigest()}.{ext}"
        if path is None:
            target = self.root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        try:
            source_phash = phash(Image.open(io.BytesIO(data)).convert("RGB"))
        except Exception:
            source_phash = ""
        row = {
            "character": character,
            "slug": slug,
            "path": relative,
            "url": "",
            "sha256": digest,
            "phash": source_phash,
            "width": "",
            "height": "",
            "format": ext.upper(),
            "backend": "folder",
            "query": character,
            "fetched_at": "2024-01-01T00:00:00Z",
        }
        self.rows.append(row)
        return row

    def add_image(self, character: str, rgb: np.ndarray) -> dict:
        return self.add(character, png_bytes(rgb))

    def remove(self, predicate) -> None:
        self.rows = [row for row in self.rows if not predicate(row)]
        self.write()

    def write(self) -> None:
        write_csv(self.root / layout.RAW_MANIFEST, layout.RAW_COLUMNS, self.rows)


class CountingDetector:
    """A real detector that also counts how many images it was asked to look at."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.calls = 0

    @property
    def settings(self):
        return self.inner.settings

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        self.calls += 1
        return self.inner.detect(rgb)


def run(root: Path, config: CropConfig, detector) -> dict:
    """crop_character for every character, then write_crop_outputs (what the flow does)."""
    results = {
        slug: crop_character(root, slug, rows, config, detector)
        for slug, rows in raw_rows_by_character(root).items()
    }
    write_crop_outputs(root, list(results.values()))
    return results


def manifest(root: Path) -> list[dict]:
    return read_csv(root / layout.FACES_MANIFEST, required=layout.FACE_COLUMNS)


def rejects(root: Path) -> list[dict]:
    return read_csv(root / layout.FACES_REJECTS, required=layout.FACE_REJECT_COLUMNS)


def snapshot(root: Path) -> dict[str, int]:
    """mtime (ns) of every file under data/faces."""
    faces = root / layout.FACES_DIR
    return {
        p.relative_to(faces).as_posix(): p.stat().st_mtime_ns
        for p in faces.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def raw(tmp_path: Path) -> RawData:
    data = RawData(tmp_path)
    for seed, (w, h) in enumerate([(300, 200), (160, 240), (128, 128)]):
        data.add_image("Alice Example", pattern(w, h, seed))
    for seed, (w, h) in enumerate([(220, 100), (90, 150)], start=10):
        data.add_image("Bob Example", pattern(w, h, seed))
    data.write()
    return data


NONE = CropConfig(detector="none", size=64, workers=2)


# ------------------------------------------------------------- outputs


def test_manifest_rows_describe_real_centre_square_crops(raw: RawData) -> None:
    results = crop_all(raw.root, NONE)
    assert [(r.slug, r.images, r.with_face, r.faces, r.rejected) for r in results] == [
        ("alice_example", 3, 3, 3, 0),
        ("bob_example", 2, 2, 2, 0),
    ]
    rows = manifest(raw.root)
    assert len(rows) == 5
    by_source = {row["path"]: row for row in raw.rows}
    for row in rows:
        source = by_source[row["source"]]
        assert (row["character"], row["slug"]) == (source["character"], source["slug"])
        assert row["source_sha256"] == source["sha256"]
        assert row["source_phash"] == source["phash"]
        assert (row["detector"], float(row["score"])) == ("none", 1.0)
        rgb = load_rgb_array(raw.root / source["path"])
        height, width = rgb.shape[:2]
        assert [int(row[k]) for k in ("x", "y", "w", "h")] == [0, 0, width, height]
        # named by the picture and the detected box
        name = f"{source['sha256'][:16]}_0_0_{width}_{height}.png"
        assert row["path"] == f"data/faces/{source['slug']}/{name}"
        side = min(width, height)
        expected_box = ((width - side) // 2, (height - side) // 2, side)
        assert (int(row["crop_x"]), int(row["crop_y"]), int(row["crop_side"])) == expected_box
        crop = load_rgb_array(raw.root / row["path"])
        assert crop.shape == (64, 64, 3)
        np.testing.assert_array_equal(crop, crop_square(rgb, *expected_box, 64))
        assert row["phash"] == phash(Image.fromarray(crop))
    assert rejects(raw.root) == []


def test_bad_images_are_recorded_with_reasons_and_do_not_stop_the_run(raw: RawData) -> None:
    good = png_bytes(pattern(100, 80, 99))
    raw.add("Alice Example", good[: len(good) // 2])  # truncated PNG
    raw.add("Alice Example", b"<!DOCTYPE html><html><body>Not found</body></html>", ext="jpg")
    raw.add("Alice Example", b"")
    raw.add("Alice Example", bomb_png())
    raw.add("Bob Example", b"whatever", sha256="not-a-sha")
    raw.add("Bob Example", b"x", path="data/raw/bob_example/gone.png")  # listed, not on disk
    raw.add("Bob Example", b"y", path="../outside.png")
    raw.write()
    results = {r.slug: r for r in crop_all(raw.root, NONE)}
    assert (results["alice_example"].images, results["alice_example"].rejected) == (7, 4)
    assert (results["bob_example"].images, results["bob_example"].rejected) == (5, 3)
    assert results["alice_example"].with_face == 3 and results["bob_example"].with_face == 2
    reasons = [row["reason"] for row in rejects(raw.root)]
    assert len(reasons) == 7
    expected = [
        "truncated image",
        "not an image: HTML",
        "empty file",
        "decompression bomb",
        "file not found",
        "can lead outside the project",
        "invalid sha256",
    ]
    for fragment in expected:
        assert sum(fragment in reason for reason in reasons) == 1, (fragment, reasons)
    assert len(manifest(raw.root)) == 5


def test_a_hand_edited_manifest_cannot_make_crop_read_pipes_huge_files_or_outside(
    raw: RawData, tmp_path_factory
) -> None:
    """Rows naming a FIFO (reading it would wait for ever), a file larger than any
    picture, a link out of the project and a file outside data/raw are rejected unread."""
    folder = raw.root / "data/raw/alice_example"
    os.mkfifo(folder / "pipe.png")
    raw.add("Alice Example", b"p", path="data/raw/alice_example/pipe.png")
    with open(folder / "huge.png", "wb") as huge:
        huge.truncate(NONE.max_decode_mb * 2**20 + 1)  # sparse: costs no disk
    raw.add("Alice Example", b"h", path="data/raw/alice_example/huge.png")
    outside = tmp_path_factory.mktemp("elsewhere") / "picture.png"  # beside the project
    outside.write_bytes(png_bytes(pattern(90, 90, 4)))
    (folder / "link.png").symlink_to(outside)
    raw.add("Alice Example", b"l", path="data/raw/alice_example/link.png")
    (raw.root / "pics").mkdir()
    (raw.root / "pics/loose.png").write_bytes(png_bytes(pattern(90, 90, 5)))
    raw.add("Alice Example", b"o", path="pics/loose.png")
    raw.write()
    results = {r.slug: r for r in crop_all(raw.root, NONE)}  # returns: the FIFO did not block
    alice = results["alice_example"]
    assert (alice.images, alice.rejected, alice.with_face) == (7, 4, 3)
    reasons = sorted(row["reason"] for row in rejects(raw.root))
    assert len(reasons) == 4
    for fragment in ("a named pipe", "too large", "through a symbolic link", "not under data/raw"):
        assert sum(fragment in reason for reason in reasons) == 1, (fragment, reasons)


class BrokenDetector:
    """A detector with bugs of the kinds a new one might have."""

    name = "broken"

    @property
    def settings(self) -> dict:
        return {"name": self.name}

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        if rgb.shape[1] > 200:
            raise RuntimeError("model exploded")
        return [Detection(5000, 5000, 10, 10, 1.0)]  # outside every picture


def test_a_failing_detector_is_recorded_per_image(raw: RawData) -> None:
    results = run(raw.root, NONE, BrokenDetector())
    assert sum(r.rejected for r in results.values()) == 5
    reasons = sorted(row["reason"] for row in rejects(raw.root))
    assert sum(r.startswith("detector failed: model exploded") for r in reasons) == 2
    assert sum(r.startswith("invalid face box") for r in reasons) == 3
    assert sum(r.detector_failed for r in results.values()) == 5
    assert "5 of them the detector failed on: see rejects.csv" in summary(list(results.values()))
    # Such failures are not cached: the next run tries those images again.
    assert sum(r.reused for r in run(raw.root, NONE, BrokenDetector()).values()) == 0


def test_progress_counts_every_image(raw: RawData) -> None:
    seen: list[tuple[int, int]] = []
    crop_all(raw.root, NONE, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (5, 5)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_characters_finishing_in_any_order_give_the_sequential_outputs(
    raw: RawData, tmp_path: Path
) -> None:
    """The flow hands crop_all a runner that yields characters as its tasks finish: the
    outputs and the results' order are those of the sequential loop all the same."""
    sequential = crop_all(raw.root, NONE)
    expected = {name: (raw.root / name).read_bytes() for name in OUTPUTS}
    shutil.rmtree(raw.root / layout.FACES_DIR)

    def backwards(jobs):
        detector = WholeImageDetector()
        for slug, rows in reversed(jobs):
            yield crop_character(raw.root, slug, rows, NONE, detector)

    calls: list[tuple[int, int, str | None]] = []
    results = crop_all(
        raw.root,
        NONE,
        run_characters=backwards,
        on_character=lambda done, total, r: calls.append((done, total, r and r.slug)),
    )
    assert (
        [r.slug for r in results]
        == [r.slug for r in sequential]
        == sorted(raw_rows_by_character(raw.root))
    )
    assert results == sequential
    assert {name: (raw.root / name).read_bytes() for name in OUTPUTS} == expected
    slugs = [r.slug for r in sequential]
    assert calls == [(0, 2, None), (1, 2, slugs[1]), (2, 2, slugs[0])]


def test_worker_count_does_not_change_the_outputs(raw: RawData, tmp_path: Path) -> None:
    crop_all(raw.root, NONE.model_copy(update={"workers": 1}))
    single = (raw.root / layout.FACES_MANIFEST).read_bytes()
    shutil.rmtree(raw.root / layout.FACES_DIR)
    crop_all(raw.root, NONE.model_copy(update={"workers": 4}))
    assert (raw.root / layout.FACES_MANIFEST).read_bytes() == single


# ------------------------------------------------------------- incremental runs


def test_second_run_reuses_everything_and_rewrites_nothing(raw: RawData) -> None:
    raw.add("Alice Example", b"<html>not an image</html>", ext="jpg")  # cached rejects too
    raw.write()
    detector = CountingDetector(WholeImageDetector())
    first = run(raw.root, NONE, detector)
    assert detector.calls == 5 and all(r.reused == 0 for r in first.values())
    before = snapshot(raw.root)
    assert len(before) == 5 + 2 + 2  # crops, two indexes, manifest and rejects
    second = run(raw.root, NONE, detector)
    assert detector.calls == 5  # nothing detected again
    assert all(r.reused == r.images for r in second.values())
    assert [(r.images, r.faces, r.rejected) for r in second.values()] == [
        (r.images, r.faces, r.rejected) for r in first.values()
    ]
    assert snapshot(raw.root) == before


def test_adding_a_character_processes_only_its_images(raw: RawData) -> None:
    detector = CountingDetector(WholeImageDetector())
    run(raw.root, NONE, detector)
    before = snapshot(raw.root)
    for seed in (20, 21, 22, 23):
        raw.add_image("Carol Example", pattern(120, 90, seed))
    raw.write()
    results = run(raw.root, NONE, detector)
    assert detector.calls == 5 + 4
    assert results["alice_example"].reused == 3 and results["bob_example"].reused == 2
    assert results["carol_example"].reused == 0 and results["carol_example"].faces == 4
    after = snapshot(raw.root)
    for name, mtime in before.items():
        if name.endswith(".png") or name.endswith(INDEX_NAME):
            assert after[name] == mtime, name
    assert len(manifest(raw.root)) == 9


def test_missing_crop_file_is_made_again(raw: RawData) -> None:
    run(raw.root, NONE, WholeImageDetector())
    victim = raw.root / manifest(raw.root)[0]["path"]
    victim.unlink()
    results = run(raw.root, NONE, WholeImageDetector())
    assert victim.is_file()
    assert sum(r.reused for r in results.values()) == 4


def test_removed_images_and_characters_leave_no_files(raw: RawData) -> None:
    run(raw.root, NONE, WholeImageDetector())
    gone = raw.rows[0]
    raw.remove(lambda row: row is gone or row["slug"] == "bob_example")
    run(raw.root, NONE, WholeImageDetector())
    faces = raw.root / layout.FACES_DIR
    assert not (faces / "bob_example").exists()
    assert not list((faces / "alice_example").glob(f"{gone['sha256'][:16]}_*"))
    assert len(list((faces / "alice_example").glob("*.png"))) == 2
    assert {row["slug"] for row in manifest(raw.root)} == {"alice_example"}


def test_interrupted_run_leftovers_are_swept(raw: RawData) -> None:
    run(raw.root, NONE, WholeImageDetector())
    leftover = raw.root / layout.FACES_DIR / "alice_example" / ".tmp-abc123"
    leftover.write_bytes(b"half a png")
    run(raw.root, NONE, WholeImageDetector())
    assert not leftover.exists()


# ------------------------------------------------------------- with the real cascade


@pytest.fixture
def illustrations(tmp_path: Path, shared_dir: Path) -> RawData:
    """Four shared illustrations (copied into the temporary project, not the repository)
    and one generated picture with no face in it."""
    data = RawData(tmp_path)
    for source in sorted((shared_dir / "testdata" / "raw" / "nishikino_maki").glob("*.jpg"))[:4]:
        data.add("Nishikino Maki", source.read_bytes(), ext="jpg")
    data.add_image("Nishikino Maki", np.full((200, 300, 3), 200, dtype=np.uint8))
    data.write()
    return data


def lbp_config(cascade_path: Path, **changes) -> CropConfig:
    return CropConfig(detector="lbp", cascade=str(cascade_path), size=96, workers=2, **changes)


def test_cascade_crops_contain_the_detected_face(illustrations: RawData, cascade_path) -> None:
    config = lbp_config(cascade_path)
    (result,) = crop_all(illustrations.root, config)
    assert result.images == 5 and result.with_face >= 3 and result.rejected == 5 - result.with_face
    assert {row["reason"] for row in rejects(illustrations.root)} == {NO_FACE}
    rows = manifest(illustrations.root)
    assert len(rows) == result.faces
    for row in rows:
        rgb = load_rgb_array(illustrations.root / row["source"])
        height, width = rgb.shape[:2]
        x, y, w, h = (int(row[k]) for k in ("x", "y", "w", "h"))
        crop_x, crop_y, side = (int(row[k]) for k in ("crop_x", "crop_y", "crop_side"))
        assert (crop_x, crop_y, side) == square_crop_box((x, y, w, h), width, height, 0.4)
        assert crop_x <= x and x + w <= crop_x + side and crop_y <= y and y + h <= crop_y + side
        assert row["detector"] == "lbp" and float(row["score"]) > 0
        crop = load_rgb_array(illustrations.root / row["path"])
        np.testing.assert_array_equal(crop, crop_square(rgb, crop_x, crop_y, side, 96))


def test_changing_margin_crops_again(illustrations: RawData, cascade_path) -> None:
    detector = CountingDetector(LbpCascadeDetector(cascade_path))
    first = run(illustrations.root, lbp_config(cascade_path), detector)["nishikino_maki"]
    before = snapshot(illustrations.root)
    old_rows = manifest(illustrations.root)
    wider = lbp_config(cascade_path, margin=0.8)
    second = run(illustrations.root, wider, detector)["nishikino_maki"]
    assert second.reused == 0 and detector.calls == 10
    assert second.faces == first.faces
    new_rows = manifest(illustrations.root)
    assert [row["path"] for row in new_rows] == [row["path"] for row in old_rows]
    after = snapshot(illustrations.root)
    widened = 0
    for old, new in zip(old_rows, new_rows, strict=True):
        assert int(new["crop_side"]) >= int(old["crop_side"])
        if new["crop_side"] != old["crop_side"]:
            widened += 1
            name = new["path"].removeprefix("data/faces/")
            assert after[name] != before[name], f"{name} was not cut again"
    assert widened >= 1
    third = run(illustrations.root, wider, detector)["nishikino_maki"]
    assert third.reused == 5 and detector.calls == 10


def test_stricter_detection_removes_crops_of_lost_faces(illustrations, cascade_path) -> None:
    run(illustrations.root, lbp_config(cascade_path), LbpCascadeDetector(cascade_path))
    crops = illustrations.root / layout.FACES_DIR / "nishikino_maki"
    before = len(list(crops.glob("*.png")))
    strict = lbp_config(cascade_path, min_size=2000)  # larger than any picture: no faces
    (result,) = run(
        illustrations.root, strict, LbpCascadeDetector(cascade_path, min_size=2000)
    ).values()
    assert before > 0 and result.faces == 0 and result.rejected == 5
    assert list(crops.glob("*.png")) == []
    assert manifest(illustrations.root) == []


class TopLeftDetector:
    """Finds one "face" in the top-left quarter: another face than the none detector's."""

    name = "top-left"

    @property
    def settings(self) -> dict:
        return {"name": self.name}

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        height, width = rgb.shape[:2]
        return [Detection(0, 0, width // 2, height // 2, 0.9)]


def test_a_review_decision_stays_with_its_face_when_the_detector_changes(raw: RawData) -> None:
    from anime_face_id.decisions import append_decisions, read_decisions

    run(raw.root, NONE, WholeImageDetector())
    first = manifest(raw.root)[0]["path"]
    append_decisions(raw.root / layout.DECISIONS, [{"path": first, "decision": "reject"}])
    run(raw.root, NONE, TopLeftDetector())
    paths = {row["path"] for row in manifest(raw.root)}
    # The top-left face is another face: it must not inherit the reject of the whole one.
    assert first not in paths and len(paths) == 5
    assert all(read_decisions(raw.root / layout.DECISIONS).crops.get(p) is None for p in paths)
    run(raw.root, NONE, WholeImageDetector())  # the first face again: the same name
    assert first in {row["path"] for row in manifest(raw.root)}


def as_an_older_version_named_them(root: Path) -> dict[str, str]:
    """Rename every crop <sha16>_<n>.png, as crop files were named before they carried
    their box, in the files and the indexes; returns new name -> old name."""
    renamed = {}
    for index_path in (root / layout.FACES_DIR).glob(f"*/{INDEX_NAME}"):
        index = json.loads(index_path.read_text())
        for sha, entry in index["images"].items():
            for number, face in enumerate(entry["faces"]):
                old = f"{sha[:16]}_{number}.png"
                (index_path.parent / face["file"]).rename(index_path.parent / old)
                renamed[face["file"]] = old
                face["file"] = old
        index_path.write_text(json.dumps(index))
    return renamed


def test_crops_named_by_an_older_version_keep_their_names_through_failures(raw: RawData):
    run(raw.root, NONE, WholeImageDetector())
    renamed = as_an_older_version_named_them(raw.root)
    run(raw.root, NONE, BrokenDetector())  # other settings, and every picture fails
    run(raw.root, NONE, WholeImageDetector())
    names = {Path(row["path"]).name for row in manifest(raw.root)}
    assert names == set(renamed.values())  # the names their review decisions are under


def test_previous_crop_names_come_only_from_well_formed_entries_of_the_picture():
    sha = "ab" * 32
    good = {"x": 1, "y": 2, "w": 3, "h": 4, "file": f"{sha[:16]}_0.png"}
    assert previous_names({"faces": [good]}, sha) == {(1, 2, 3, 4): good["file"]}
    for entry in (None, "text", {"faces": None}, {"faces": 5}, {"faces": ["x"]}):
        assert previous_names(entry, sha) == {}
    for name in ("../../evil.png", f"{'cd' * 8}_0.png", "notes.txt", 7):
        assert previous_names({"faces": [{**good, "file": name}]}, sha) == {}


# ------------------------------------------------------------- inconsistent state


def test_outputs_refuse_an_index_that_no_longer_matches_the_raw_data(raw: RawData) -> None:
    results = run(raw.root, NONE, WholeImageDetector())
    raw.add_image("Alice Example", pattern(50, 50, 77))
    raw.write()
    with pytest.raises(CropStateError, match="alice_example"):
        write_crop_outputs(raw.root, list(results.values()))


def test_outputs_refuse_characters_without_a_result(raw: RawData) -> None:
    rows = raw_rows_by_character(raw.root)
    only = crop_character(
        raw.root, "alice_example", rows["alice_example"], NONE, WholeImageDetector()
    )
    with pytest.raises(CropStateError, match="bob_example"):
        write_crop_outputs(raw.root, [only])


def test_outputs_refuse_characters_cropped_with_different_settings(raw: RawData) -> None:
    rows = raw_rows_by_character(raw.root)
    detector = WholeImageDetector()
    results = [
        crop_character(raw.root, "alice_example", rows["alice_example"], NONE, detector),
        crop_character(
            raw.root,
            "bob_example",
            rows["bob_example"],
            NONE.model_copy(update={"size": 32}),
            detector,
        ),
    ]
    with pytest.raises(CropStateError, match="different settings"):
        write_crop_outputs(raw.root, results)


def test_unsafe_slug_in_the_raw_manifest_is_refused(raw: RawData) -> None:
    raw.rows[0]["slug"] = "../../etc"
    raw.write()
    with pytest.raises(
        StageError, match=r"manifest\.csv line 2, column slug: '../../etc' is not a slug"
    ):
        raw_rows_by_character(raw.root)


def test_missing_raw_manifest_says_to_run_collect(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"manifest\.csv not found: run the collect stage first"):
        crop_all(tmp_path, NONE)


def test_a_raw_manifest_with_wrong_headers_is_a_stage_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / layout.RAW_MANIFEST).parent.mkdir(parents=True)
    (tmp_path / layout.RAW_MANIFEST).write_text("when,where\n1,2\n", encoding="utf-8")
    with pytest.raises(StageError, match=r"manifest\.csv.*slug"):
        crop_all(tmp_path, NONE)
