"""The review checkpoint on a generated project: real PNGs, manifests and decisions."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anime_face_id import layout
from anime_face_id.config import Params, parse_params
from anime_face_id.decisions import append_decisions
from anime_face_id.errors import StageError
from anime_face_id.fileio import read_csv, write_csv
from anime_face_id.imaging import load_rgb_array, phash
from anime_face_id.review import ReviewIncomplete, apply_review, review_status
from tests.support.processes import run_stage_flow

NAMES = ("Alice Liddell", "Bob Builder", "Carol")
RAW_PER_CHARACTER = {"Alice Liddell": 2, "Bob Builder": 2, "Carol": 1}
CROPS_PER_RAW = 2


def png_bytes(array: np.ndarray, exif_orientation: int | None = None) -> bytes:
    image = Image.fromarray(np.ascontiguousarray(array))
    buffer = io.BytesIO()
    if exif_orientation is None:
        image.save(buffer, format="PNG")
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(buffer, format="PNG", exif=exif)
    return buffer.getvalue()


@dataclass
class Project:
    root: Path
    slugs: dict[str, str]
    rng: np.random.Generator
    raw: list[dict] = field(default_factory=list)
    faces: list[dict] = field(default_factory=list)

    def params(
        self, names=NAMES, require_complete: bool = True, margin: float = 0.0, size: int = 24
    ) -> Params:
        return parse_params(
            {
                "characters": [{"name": name} for name in names],
                "crop": {"margin": margin, "size": size},
                "review": {"require_complete": require_complete},
            }
        )

    def add_raw(self, name: str, pixels: np.ndarray, exif_orientation: int | None = None) -> dict:
        data = png_bytes(pixels, exif_orientation)
        sha = hashlib.sha256(data).hexdigest()
        path = f"data/raw/{self.slugs[name]}/{sha}.png"
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        (self.root / path).write_bytes(data)
        upright = load_rgb_array(self.root / path)
        row = {
            "character": name,
            "slug": self.slugs[name],
            "path": path,
            "url": f"file:///{name}/{len(self.raw)}.png",
            "sha256": sha,
            "phash": phash(Image.fromarray(upright)),
            "width": upright.shape[1],
            "height": upright.shape[0],
            "format": "PNG",
            "backend": "folder",
            "query": name,
            "fetched_at": "2024-05-01T00:00:00+00:00",
        }
        self.raw.append(row)
        write_csv(self.root / layout.RAW_MANIFEST, layout.RAW_COLUMNS, self.raw)
        return row

    def add_face(self, raw: dict, index: int) -> dict:
        pixels = self.rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        path = f"data/faces/{raw['slug']}/{raw['sha256'][:12]}_{index}.png"
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        (self.root / path).write_bytes(png_bytes(pixels))
        row = {
            "character": raw["character"],
            "slug": raw["slug"],
            "path": path,
            "source": raw["path"],
            "source_sha256": raw["sha256"],
            "x": 4 * index,
            "y": 4,
            "w": 20,
            "h": 20,
            "crop_x": 0,
            "crop_y": 0,
            "crop_side": 28,
            "detector": "lbp",
            "score": "",
            "phash": phash(Image.fromarray(pixels)),
            "source_phash": raw["phash"],
        }
        self.faces.append(row)
        write_csv(self.root / layout.FACES_MANIFEST, layout.FACE_COLUMNS, self.faces)
        return row

    def crops_of(self, name: str) -> list[str]:
        return [row["path"] for row in self.faces if row["character"] == name]

    def decide(self, *rows: dict) -> None:
        append_decisions(self.root / layout.DECISIONS, rows)

    def curated(self) -> dict[str, dict]:
        return {
            row["path"]: row
            for row in read_csv(self.root / layout.CURATED_MANIFEST, layout.CURATED_COLUMNS)
        }


@pytest.fixture
def project(tmp_path: Path) -> Project:
    project = Project(
        tmp_path,
        parse_params({"characters": [{"name": n} for n in NAMES]}).slugs,
        np.random.default_rng(7),
    )
    for name, count in RAW_PER_CHARACTER.items():
        for _ in range(count):
            raw = project.add_raw(name, project.rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
            for index in range(CROPS_PER_RAW):
                project.add_face(raw, index)
    return project


def by_slug(rows: list[dict]) -> dict[str, dict]:
    return {row["slug"]: row for row in rows}


def accept_all_but(project: Project, *skip: str) -> None:
    project.decide(
        *(
            {"path": row["path"], "decision": "accept"}
            for row in project.faces
            if row["path"] not in skip
        )
    )


def test_reject_relabel_and_accept(project):
    alice = project.crops_of("Alice Liddell")
    accept_all_but(project)
    project.decide(
        {"path": alice[0], "decision": "reject"},
        {"path": alice[1], "decision": "relabel", "character": "Bob Builder"},
    )
    decisions_before = (project.root / layout.DECISIONS).read_bytes()

    summary = apply_review(project.root, project.params())

    curated = project.curated()
    assert alice[0] not in curated
    relabelled = curated[alice[1]]
    assert (relabelled["character"], relabelled["slug"], relabelled["status"]) == (
        "Bob Builder",
        "bob_builder",
        "relabelled",
    )
    face = next(row for row in project.faces if row["path"] == alice[1])
    assert relabelled["source"] == face["source"] and relabelled["phash"] == face["phash"]
    assert {curated[path]["status"] for path in alice[2:]} == {"accepted"}
    assert all(row["origin"] == "detector" for row in curated.values())
    assert len(curated) == len(project.faces) - 1

    rows = by_slug(summary.rows)
    assert rows["alice_liddell"] == {
        "character": "Alice Liddell", "slug": "alice_liddell", "crops": 4, "accepted": 2, "rejected": 1,
        "relabelled_in": 0, "relabelled_out": 1, "manual": 0, "pending": 0, "curated": 2,
    }  # fmt: skip
    assert rows["bob_builder"]["relabelled_in"] == 1 and rows["bob_builder"]["curated"] == 5
    assert (summary.pending, summary.curated, summary.warnings) == (0, 9, [])
    assert (project.root / layout.DECISIONS).read_bytes() == decisions_before


def test_pending_with_require_complete_stops_and_writes_nothing(project):
    alice = project.crops_of("Alice Liddell")
    project.decide(*({"path": path, "decision": "accept"} for path in alice[:3]))
    decisions_before = (project.root / layout.DECISIONS).read_bytes()

    with pytest.raises(ReviewIncomplete) as caught:
        apply_review(project.root, project.params(require_complete=True))

    error = caught.value
    assert (error.pending, error.total, error.characters) == (7, 10, 3)
    message = str(error)
    assert "7 of 10 face crops" in message and "3 characters" in message
    assert "`make review`" in message and "review.require_complete: false" in message
    assert "\n" not in message  # one paragraph
    assert not (project.root / layout.CURATED_DIR).exists()
    assert (project.root / layout.DECISIONS).read_bytes() == decisions_before


def test_pending_accepted_when_review_is_not_required(project):
    bob = project.crops_of("Bob Builder")
    project.decide({"path": bob[0], "decision": "reject"})

    summary = apply_review(project.root, project.params(require_complete=False))

    curated = project.curated()
    assert bob[0] not in curated
    assert len(curated) == 9
    assert {row["status"] for row in curated.values()} == {"pending_accepted"}
    assert summary.pending == 9 and summary.curated == 9
    assert by_slug(summary.rows)["bob_builder"]["pending"] == 3


def test_manual_box_is_cut_from_the_upright_raw_pixels(project):
    upright = project.rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    # Stored rotated with EXIF orientation 6: the box refers to the upright picture.
    raw = project.add_raw("Carol", np.rot90(upright, 1), exif_orientation=6)
    assert (raw["width"], raw["height"]) == (70, 50)
    accept_all_but(project)
    project.decide(
        {"path": raw["path"], "decision": "box", "box": "10,5,24,24"},
        {
            "path": raw["path"],
            "decision": "box",
            "box": "40,20,20,20",
            "character": "Alice Liddell",
        },
    )
    decisions_before = (project.root / layout.DECISIONS).read_bytes()

    summary = apply_review(project.root, project.params(margin=0.0, size=24))

    manual = {row["path"]: row for row in project.curated().values() if row["origin"] == "manual"}
    carol_path = f"data/curated/manual/carol/{raw['sha256'][:12]}_10_5_24_24.png"
    alice_path = f"data/curated/manual/alice_liddell/{raw['sha256'][:12]}_40_20_20_20.png"
    assert set(manual) == {carol_path, alice_path}
    crop = load_rgb_array(project.root / carol_path)
    assert np.array_equal(crop, upright[5:29, 10:34])
    row = manual[carol_path]
    assert (row["character"], row["slug"], row["status"]) == ("Carol", "carol", "manual")
    assert (row["source"], row["source_sha256"], row["source_phash"]) == (
        raw["path"],
        raw["sha256"],
        raw["phash"],
    )
    assert row["phash"] == phash(Image.fromarray(crop))
    # A 20 px box, squared and resized to 24 px: the crop is the size the params ask for.
    assert load_rgb_array(project.root / alice_path).shape == (24, 24, 3)
    assert manual[alice_path]["character"] == "Alice Liddell"
    rows = by_slug(summary.rows)
    assert rows["carol"]["manual"] == 1 and rows["alice_liddell"]["manual"] == 1
    assert rows["carol"]["curated"] == 2 + 1
    assert (project.root / layout.DECISIONS).read_bytes() == decisions_before


def test_withdrawn_boxes_and_stale_manual_files_are_removed(project):
    raw = project.raw[0]
    accept_all_but(project)
    project.decide({"path": raw["path"], "decision": "box", "box": "0,0,30,30"})
    stray = project.root / layout.CURATED_DIR / "manual" / "ghost" / "old.png"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"left over from an earlier run")

    apply_review(project.root, project.params())
    crop = project.root / f"data/curated/manual/alice_liddell/{raw['sha256'][:12]}_0_0_30_30.png"
    assert crop.is_file()
    assert not stray.exists() and not stray.parent.exists()

    project.decide({"path": raw["path"], "decision": "reject", "box": "0,0,30,30"})
    summary = apply_review(project.root, project.params())
    assert not crop.exists()
    assert not any(row["origin"] == "manual" for row in project.curated().values())
    assert by_slug(summary.rows)["alice_liddell"]["manual"] == 0


def test_unknown_paths_and_characters_are_warnings_not_failures(project):
    alice = project.crops_of("Alice Liddell")
    accept_all_but(project, alice[0])
    project.decide(
        {"path": "data/faces/nobody/gone.png", "decision": "accept"},
        {"path": alice[0], "decision": "relabel", "character": "Dave"},
        {"path": "data/raw/nobody/missing.png", "decision": "box", "box": "1,1,10,10"},
        {"path": alice[1], "decision": "box", "box": "1,1,10,10"},
        {"path": project.raw[0]["path"], "decision": "reject"},
        {"path": project.raw[1]["path"], "decision": "box", "box": "500,500,10,10"},
    )
    with (project.root / layout.DECISIONS).open("a", encoding="utf-8") as handle:
        handle.write("t,data/faces/x.png,perhaps,,,\n")
    decisions_before = (project.root / layout.DECISIONS).read_bytes()

    summary = apply_review(project.root, project.params(require_complete=False))

    text = "\n".join(summary.warnings)
    assert len(summary.warnings) == 7, text
    assert "data/faces/nobody/gone.png" in text and "not a crop" in text
    assert "'Dave'" in text and "not a character in params.yaml" in text
    assert "data/raw/nobody/missing.png" in text and "not in the raw manifest" in text
    assert "a face crop, not a raw image" in text
    assert "only box decisions apply to raw images" in text
    assert "lies outside" in text
    assert "'perhaps'" in text
    # The crop whose relabel named an unknown character is still undecided.
    assert project.curated()[alice[0]]["status"] == "pending_accepted"
    assert summary.pending == 1
    assert (project.root / layout.DECISIONS).read_bytes() == decisions_before

    with pytest.raises(ReviewIncomplete, match="1 of 10 face crops") as caught:
        apply_review(project.root, project.params(require_complete=True))
    assert len(caught.value.warnings) == 7


def test_unreadable_raw_image_for_a_box_is_a_warning(project):
    raw = project.raw[2]
    (project.root / raw["path"]).write_bytes(b"<html>not an image</html>")
    accept_all_but(project)
    project.decide({"path": raw["path"], "decision": "box", "box": "2,2,20,20"})

    summary = apply_review(project.root, project.params())

    assert len(summary.warnings) == 1 and "cannot cut the box" in summary.warnings[0]
    assert by_slug(summary.rows)["bob_builder"]["manual"] == 0
    assert summary.curated == len(project.faces)


def test_review_status_counts_without_writing(project):
    carol = project.crops_of("Carol")
    project.decide(
        {"path": carol[0], "decision": "reject"},
        {"path": carol[1], "decision": "relabel", "character": "Alice Liddell"},
        {
            "path": project.raw[0]["path"],
            "decision": "box",
            "box": "3,3,20,20",
            "character": "Carol",
        },
    )
    status = review_status(project.root, project.params(require_complete=True))
    assert not (project.root / layout.CURATED_DIR).exists()
    rows = by_slug(status.rows)
    assert status.pending == 8 and status.curated == 2  # a relabel and a box; pending not counted
    assert (
        rows["carol"]["rejected"],
        rows["carol"]["relabelled_out"],
        rows["carol"]["manual"],
    ) == (1, 1, 1)
    assert rows["alice_liddell"]["relabelled_in"] == 1 and rows["alice_liddell"]["pending"] == 4

    loose = review_status(project.root, project.params(require_complete=False))
    applied = apply_review(project.root, project.params(require_complete=False))
    assert loose.rows == applied.rows and loose.curated == applied.curated == 10


def test_crops_of_characters_removed_from_params_are_left_out(project):
    carol = project.crops_of("Carol")
    accept_all_but(project)
    project.decide({"path": carol[0], "decision": "relabel", "character": "Bob Builder"})

    summary = apply_review(project.root, project.params(names=NAMES[:2]))

    curated = project.curated()
    assert carol[1] not in curated
    assert curated[carol[0]]["character"] == "Bob Builder"
    assert [row["slug"] for row in summary.rows] == ["alice_liddell", "bob_builder"]
    assert any(
        "'Carol' is not in params.yaml: 1 of its crops" in warning for warning in summary.warnings
    )


def test_missing_crop_manifest_is_a_clear_error(tmp_path):
    params = parse_params({"characters": [{"name": "A"}, {"name": "B"}]})
    with pytest.raises(StageError, match="run the crop stage first"):
        apply_review(tmp_path, params)


# ---------------------------------------------------------------- untrusted table values


def files_outside_data(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_relative_to(root / "data")]


def rewrite_raw(project: Project) -> None:
    write_csv(project.root / layout.RAW_MANIFEST, layout.RAW_COLUMNS, project.raw)


def test_a_raw_sha256_that_climbs_out_never_leads_a_write_outside_data(project):
    raw = project.raw[0]
    raw["sha256"] = (
        "../../../../x"  # once named the manual crop: data/curated/manual/<slug>/../../../../
    )
    rewrite_raw(project)
    accept_all_but(project)
    project.decide({"path": raw["path"], "decision": "box", "box": "10,5,24,24"})

    summary = apply_review(project.root, project.params())

    assert files_outside_data(project.root) == []
    assert not any(row["origin"] == "manual" for row in project.curated().values())
    assert not list((project.root / layout.CURATED_DIR).rglob("*.png"))
    text = "\n".join(summary.warnings)
    assert "data/raw/manifest.csv line 2, column sha256: '../../../../x' is not a sha256" in text
    assert "not in the raw manifest" in text  # the box on it is not applied


def test_face_paths_leading_out_of_data_faces_are_left_out_with_a_warning(
    project, tmp_path_factory
):
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.png"
    outside.write_bytes(png_bytes(np.zeros((32, 32, 3), dtype=np.uint8)))
    link = project.root / "data/faces/alice_liddell/link.png"
    link.symlink_to(outside)
    template = project.faces[0]
    for path in (link.relative_to(project.root).as_posix(), "data/faces/../../secret.png"):
        project.faces.append({**template, "path": path})
    write_csv(project.root / layout.FACES_MANIFEST, layout.FACE_COLUMNS, project.faces)

    summary = apply_review(project.root, project.params(require_complete=False))

    curated = project.curated()
    assert len(curated) == len(project.faces) - 2
    assert not any("link" in path or ".." in path for path in curated)
    text = "\n".join(summary.warnings)
    assert "data/faces/manifest.csv line 12, column path:" in text
    assert "outside the project through a symbolic link" in text
    assert "data/faces/manifest.csv line 13, column path:" in text and "'..'" in text


def test_a_raw_image_reached_through_a_link_out_of_the_project_is_not_cut(
    project, tmp_path_factory
):
    outside = tmp_path_factory.mktemp("elsewhere") / "picture.png"
    outside.write_bytes(png_bytes(np.zeros((60, 80, 3), dtype=np.uint8)))
    raw = project.raw[0]
    (project.root / raw["path"]).unlink()
    (project.root / raw["path"]).symlink_to(outside)
    accept_all_but(project)
    project.decide({"path": raw["path"], "decision": "box", "box": "1,1,20,20"})

    summary = apply_review(project.root, project.params())

    assert not any(row["origin"] == "manual" for row in project.curated().values())
    assert any("through a symbolic link" in warning for warning in summary.warnings)


@pytest.mark.parametrize(
    "box, width, height",
    [
        ("400,600,100000,100000", 480, 640),  # starts inside the picture: was clipped
        ("400,600,100000,100000", 640, 480),
        ("600,400,100,100", 640, 480),
        ("0,470,20,20", 640, 480),
    ],
)
def test_manual_boxes_beyond_the_picture_are_refused_as_the_review_app_refuses_them(
    project, box, width, height
):
    from anime_face_id.decisions import parse_box
    from anime_face_id.review_queue import RawImage, check_box

    pixels = project.rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    raw = project.add_raw("Carol", pixels)
    image = RawImage(raw["path"], "Carol", width, height, (), (), True)
    with pytest.raises(ValueError, match=f"does not fit in the {width}x{height} image"):
        check_box(image, parse_box(box))  # the app's refusal
    accept_all_but(project)
    project.decide({"path": raw["path"], "decision": "box", "box": box})

    summary = apply_review(project.root, project.params())

    assert not any(row["origin"] == "manual" for row in project.curated().values())
    assert by_slug(summary.rows)["carol"]["manual"] == 0
    assert len(summary.warnings) == 1
    assert f"box {box} lies outside {raw['path']} ({width}x{height})" in summary.warnings[0]


def test_box_beyond_the_decoded_picture_is_refused_when_the_manifest_has_no_size(project):
    raw = project.raw[0]  # 80 x 60
    raw["width"] = raw["height"] = ""
    rewrite_raw(project)
    accept_all_but(project)
    project.decide({"path": raw["path"], "decision": "box", "box": "70,50,20,20"})

    summary = apply_review(project.root, project.params())

    assert not any(row["origin"] == "manual" for row in project.curated().values())
    assert len(summary.warnings) == 1
    assert "cannot cut the box" in summary.warnings[0]
    assert "does not fit in the 80x60 image" in summary.warnings[0]


def test_a_decisions_header_without_the_columns_is_a_stage_error(project):
    (project.root / layout.DECISIONS).parent.mkdir(parents=True, exist_ok=True)
    (project.root / layout.DECISIONS).write_text("when,path,decision\n", encoding="utf-8")
    with pytest.raises(StageError, match="header lacks column"):
        apply_review(project.root, project.params())


def test_a_decisions_file_holding_only_a_byte_order_mark_has_no_decisions(project):
    (project.root / layout.DECISIONS).parent.mkdir(parents=True, exist_ok=True)
    (project.root / layout.DECISIONS).write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(ReviewIncomplete, match="10 of 10 face crops"):
        apply_review(project.root, project.params())
    assert apply_review(project.root, project.params(require_complete=False)).curated == 10


@pytest.mark.parametrize(
    "table, content, message",
    [
        (
            layout.FACES_MANIFEST,
            b"character,slug,file\n",
            "data/faces/manifest.csv: missing column",
        ),
        (layout.RAW_MANIFEST, b"character,path\n", "data/raw/manifest.csv: missing column"),
        (
            layout.FACES_MANIFEST,
            b"character,slug\nBob,b\xffb\n",
            r"data/faces/manifest.csv is not UTF-8 text: byte 0xff at offset 20, line 2",
        ),
    ],
)
def test_unreadable_manifests_are_stage_errors_naming_the_table(project, table, content, message):
    (project.root / table).write_bytes(content)
    with pytest.raises(StageError, match=message):
        apply_review(project.root, project.params())


@pytest.mark.slow  # a Prefect server for the session, and a stage process
def test_review_stage_stops_on_a_bad_decisions_header_with_one_message(project, prefect_api):

    import yaml

    params = {"characters": [{"name": name} for name in NAMES]}
    (project.root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    (project.root / layout.DECISIONS).parent.mkdir(parents=True, exist_ok=True)
    (project.root / layout.DECISIONS).write_text("when,path,decision\n", encoding="utf-8")
    process = run_stage_flow("review", project.root, prefect_api)
    output = process.stdout + process.stderr
    assert process.returncode == 1, output
    assert "Traceback" not in output
    assert output.count("header lacks column(s) time, character, box, note") == 1, output
    assert "review stopped: " in process.stderr
