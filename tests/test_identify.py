"""Identifying faces in pictures (anime_face_id.identify): detection and cropping exactly as
the crop stage does them, naming from the gallery, unknown faces, bad input, the JSON
schema, the labelled drawing. Also the projects other identify tests build on."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from anime_face_id import annotate as annotating
from anime_face_id import layout
from anime_face_id.annotate import KNOWN_COLOUR, UNKNOWN_COLOUR, annotate, draws, label_and_font
from anime_face_id.checkpoint import save_checkpoint
from anime_face_id.config import Params, TrainConfig, parse_params
from anime_face_id.crop import settings_fingerprint
from anime_face_id.cutting import crop_image
from anime_face_id.faces.detectors import load_detector
from anime_face_id.fileio import read_csv, write_csv
from anime_face_id.gallery import GALLERY, StaleGallery, rebuild_gallery
from anime_face_id.identify import PICTURES_PER_PASS, load_identifier, report
from anime_face_id.identify_results import PICTURE_JSON_SCHEMA, FaceResult
from anime_face_id.imaging import ImageRejected, load_rgb
from anime_face_id.model.embedder import Embedder
from anime_face_id.picture_input import base64_bytes
from anime_face_id.slugs import slugify
from anime_face_id.train import train
from tests.support.synthetic import DESIGNS, drawn_face
from tests.test_train import make_synthetic_project, tiny_config

NAMES = ("Akane Red", "Ao Blue", "Midori Green", "Kiiro Yellow")
UNSEEN = "Shiro White"  # held out: never trained on, not in the gallery
# Three characters in one picture: a single-face illustration of each, side by side.
GROUP = {
    "Nishikino Maki": "nishikino_maki/13.jpg",
    "Sakurauchi Riko": "sakurauchi_riko/10.jpg",
    "Takimoto Hifumi": "takimoto_hifumi/18.jpg",
}
GROUP_PICTURE = Path("data/raw/group/three_characters.png")


# --------------------------------------------------------------------- projects


def params_dict(names, detector: str = "none", cascade: str | None = None, **identify) -> dict:
    return {
        "characters": [{"name": name} for name in names],
        "crop": {"detector": detector, "cascade": cascade, "size": 64},
        "train": {"image_size": 64, "embedding_dim": 32, "device": "cpu"},
        "identify": {"device": "cpu", **identify},
    }


def params_for(names, detector: str = "none", cascade: str | None = None, **identify) -> Params:
    return parse_params(params_dict(names, detector, cascade, **identify))


def write_params(root: Path, data: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def save_untrained_checkpoint(path: Path, class_names, seed: int = 0) -> None:
    """ImageNet backbone + a random projection: no training, but distinct pictures get
    distinct embeddings (enough for plumbing tests with pictures from the gallery)."""
    torch.manual_seed(seed)
    config = TrainConfig(image_size=64, embedding_dim=32, device="cpu")
    model = Embedder(embedding_dim=config.embedding_dim, pretrained=True)
    save_checkpoint(path, model, config, list(class_names), 1, {})


def make_untrained_project(root: Path, seed: int = 0, images: bool = True) -> Path:
    """Generated crops and splits, an untrained checkpoint and (with ``images``) its
    gallery; ``images=False`` only replaces the checkpoint (a "retrained" model)."""
    if images:
        make_synthetic_project(root, names=NAMES, counts=(4, 2, 2), seed=seed)
        write_params(root, params_dict(NAMES))
    save_untrained_checkpoint(root / "models" / "embedder.pt", sorted(NAMES), seed)
    if images:
        rebuild_gallery(root, params_for(NAMES), root / "models" / "embedder.pt", root / GALLERY)
    return root


def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly trained model of the generated characters and its gallery; built once per
    test session and shared (read-only) by the modules that need recognition."""
    root = tmp_path_factory.getbasetemp() / "identify-trained" / "project"
    if not (root / GALLERY).is_file():
        make_synthetic_project(
            root, names=(*NAMES, UNSEEN), counts=(8, 4, 3), holdout=(UNSEEN,), seed=0
        )
        write_params(root, params_dict(NAMES))
        train(root, tiny_config(epochs=2, batches_per_epoch=4))
        rebuild_gallery(root, params_for(NAMES), root / "models" / "embedder.pt", root / GALLERY)
    return root


def held_out_pictures(root: Path, names=NAMES) -> list[tuple[str, Path]]:
    """The test split's pictures of ``names``: never trained on, not in the gallery."""
    return [
        (name, path)
        for name in names
        for path in sorted((root / "data/faces" / name.lower().replace(" ", "_")).glob("test_*"))
    ]


def write_group_picture(shared_dir: Path, destination: Path) -> list[tuple[str, int, int]]:
    """One single-face illustration of each GROUP character side by side; returns each
    character's column span (name, first x, last x + 1)."""
    parts = [(name, load_rgb(shared_dir / "testdata" / "raw" / p)) for name, p in GROUP.items()]
    canvas = Image.new(
        "RGB", (sum(i.width for _, i in parts), max(i.height for _, i in parts)), "white"
    )
    spans, left = [], 0
    for name, image in parts:
        canvas.paste(image, (left, 0))
        spans.append((name, left, left + image.width))
        left += image.width
    destination.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(destination)
    return spans


def character_at(spans: list[tuple[str, int, int]], box: tuple[int, int, int, int]) -> str:
    centre = box[0] + box[2] / 2
    return next(name for name, first, last in spans if first <= centre < last)


def illustration_project(root: Path, shared_dir: Path, cascade_path: Path, per: int = 3) -> Path:
    """Real illustrations cropped by the crop stage's own code (lbp cascade), an untrained
    checkpoint and its gallery. The faces of GROUP_PICTURE are in the training gallery
    under their characters (as review would relabel them); ``per`` more pictures of each
    character alternate between train and val."""
    data = params_dict(list(GROUP), "lbp", str(cascade_path))
    write_params(root, data)
    params = parse_params(data)
    detector = load_detector(root, params.crop)
    fingerprint = settings_fingerprint(params.crop, detector)
    splits: dict[str, list[dict]] = {"train": [], "val": []}

    def crop(relative: Path, who, split_of) -> int:
        sha = hashlib.sha256((root / relative).read_bytes()).hexdigest()
        directory = root / layout.FACES_DIR / relative.parent.name
        directory.mkdir(parents=True, exist_ok=True)
        row = {"character": relative.parent.name, "path": relative.as_posix()}
        entry = crop_image(root, directory, sha, row, params.crop, detector, fingerprint)
        for face in entry["faces"]:
            path = (directory.relative_to(root) / face["file"]).as_posix()
            name = who((face["x"], face["y"], face["w"], face["h"]))
            splits[split_of()].append(
                {
                    "character": name,
                    "slug": slugify(name),
                    "path": path,
                    "source": row["path"],
                    "cluster": path,
                }
            )
        return len(entry["faces"])

    spans = write_group_picture(shared_dir, root / GROUP_PICTURE)
    assert crop(GROUP_PICTURE, lambda box: character_at(spans, box), lambda: "train") == 3
    for name, shown in GROUP.items():
        slug = slugify(name)
        pictures = sorted((shared_dir / "testdata" / "raw" / slug).glob("*.jpg"))
        kept = 0
        for picture in [p for p in pictures if f"{slug}/{p.name}" != shown][: per * 3]:
            relative = Path("data/raw") / slug / picture.name
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(picture.read_bytes())
            kept += bool(
                crop(relative, lambda box, n=name: n, lambda k=kept: ("train", "val")[k % 2])
            )
            if kept >= per:
                break
    for split, rows in splits.items():
        write_csv(root / layout.split_csv(split), layout.SPLIT_COLUMNS, rows)
    save_untrained_checkpoint(root / "models" / "embedder.pt", sorted(GROUP))
    rebuild_gallery(root, params, root / "models" / "embedder.pt", root / GALLERY)
    return root


# --------------------------------------------------------------------- bad input


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + b"\x00" * 3)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def bad_inputs(where: Path) -> dict[str, tuple[Path, str]]:
    """{what: (file, expected reason fragment)}."""
    face = png_bytes(drawn_face(np.random.default_rng(0), DESIGNS["Ao Blue"]))
    files = {
        "text": (b"just some words, not a picture\n", "not an image"),
        "html": (b"<!doctype html><html>oops</html>", "HTML"),
        "truncated": (face[: len(face) // 2], "truncated"),
        "huge": (png_declaring(30_000, 30_000), "decompression bomb"),
        "empty": (b"", "empty file"),
    }
    written = {}
    for what, (data, reason) in files.items():
        path = where / f"{what}.png"
        path.write_bytes(data)
        written[what] = (path, reason)
    written["missing"] = (where / "absent.png", "cannot read")
    written["folder"] = (where, "cannot read")
    written["corrupt_exif"] = (where / "exif.webp", "corrupt image")
    written["corrupt_exif"][0].write_bytes(corrupt_exif_webp())
    # a pipe would block a plain read for ever, /dev/zero would never end
    os.mkfifo(where / "pipe.png")
    written["fifo"] = (where / "pipe.png", "named pipe")
    (where / "zeros.png").symlink_to("/dev/zero")
    written["dev_zero"] = (where / "zeros.png", "character device")
    return written


def corrupt_exif_webp() -> bytes:
    """A valid small WebP whose EXIF block is garbage: Pillow's TIFF parser raises
    SyntaxError on it when the orientation is read."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, "WEBP", exif=b"garbage!" * 4)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    """Shared by this module's tests, which only read it."""
    return make_untrained_project(tmp_path_factory.mktemp("identify") / "project")


def validate_picture(answer: dict) -> None:
    jsonschema.validate(answer, PICTURE_JSON_SCHEMA)


def test_a_gallery_picture_is_named_with_its_neighbours_and_candidates(untrained):
    identifier = load_identifier(untrained, params_for(NAMES, top=3, neighbours=4))
    picture = "data/faces/ao_blue/train_2.png"
    result = identifier.identify_file(untrained / picture, "p.png")
    assert result.status == "ok" and result.error is None
    assert (result.width, result.height) == (64, 64)
    (face,) = result.faces
    assert face.box == (0, 0, 64, 64) and face.crop == (0, 0, 64)  # detector "none"
    assert face.character == "Ao Blue" and face.known
    assert face.score == pytest.approx(1.0, abs=1e-4)
    assert face.neighbours[0].path == picture and len(face.neighbours) == 4
    # candidates: distinct characters, best first, the first one's score is the face's
    names = [c.character for c in face.candidates]
    assert len(names) == 3 == len(set(names)) and names[0] == "Ao Blue"
    assert [c.score for c in face.candidates] == sorted(
        (c.score for c in face.candidates), reverse=True
    )
    validate_picture(result.to_json())


def test_per_character_scores_are_the_best_similarity_to_that_characters_images(untrained):
    identifier = load_identifier(untrained, params_for(NAMES, top=4))
    result = identifier.identify_file(untrained / "data/faces/akane_red/test_0.png")
    from anime_face_id.embed import embed_paths

    query = embed_paths(identifier.model, [untrained / "data/faces/akane_red/test_0.png"], 64)
    gallery = identifier.gallery
    similarity = (gallery.embeddings @ query.numpy().T)[:, 0]
    for candidate in result.faces[0].candidates:
        own = [i for i in range(len(gallery)) if gallery.character_of(i) == candidate.character]
        assert candidate.score == pytest.approx(float(similarity[own].max()), abs=1e-5)


def test_faces_below_the_threshold_are_unknown_but_keep_their_candidates(untrained):
    strict = load_identifier(untrained, params_for(NAMES))
    strict.gallery.calibration = replace(strict.gallery.calibration, threshold=0.9999)
    other = strict.identify_file(untrained / "data/faces/kiiro_yellow/test_1.png")
    (face,) = other.faces
    assert face.character is None and not face.known and face.label == "unknown"
    assert face.candidates and face.score == face.candidates[0].score < 0.9999
    answer = other.to_json()
    validate_picture(answer)
    assert answer["faces"][0]["character"] is None and answer["faces"][0]["known"] is False
    # a picture from the gallery still clears even this threshold
    same = strict.identify_file(untrained / "data/faces/kiiro_yellow/train_1.png")
    assert same.faces[0].character == "Kiiro Yellow"


def test_bad_input_gets_a_specific_reason_and_never_raises(untrained, tmp_path):
    identifier = load_identifier(untrained, params_for(NAMES))
    for what, (path, reason) in bad_inputs(tmp_path).items():
        result = identifier.identify_file(path, what)
        assert result.status == "error", what
        assert reason in result.error, (what, result.error)
        assert result.faces == () and result.width is None
        validate_picture(result.to_json())


def test_pictures_named_together_get_the_answers_they_get_one_by_one(untrained, tmp_path):
    identifier = load_identifier(untrained, params_for(NAMES, top=3, neighbours=2))
    good = sorted((untrained / "data/faces").glob("*/test_*.png"))[:5]
    bad = list(bad_inputs(tmp_path).values())[:2]
    paths = [good[0], bad[0][0], *good[1:3], bad[1][0], *good[3:]]
    names = [f"picture {n}" for n in range(len(paths))]
    together = identifier.identify_files(paths, names)
    alone = [identifier.identify_file(path, name) for path, name in zip(paths, names, strict=True)]
    assert [r.picture for r in together] == names
    assert [r.status for r in together] == ["ok", "error", "ok", "ok", "error", "ok", "ok"]
    for batched, single in zip(together, alone, strict=True):
        assert batched.to_json() == single.to_json()  # rounded to 4 decimals, as served


def test_many_pictures_are_named_a_few_at_a_time_with_the_same_answers(untrained, monkeypatch):
    identifier = load_identifier(untrained, params_for(NAMES))
    paths = sorted((untrained / "data/faces").glob("*/*.png"))
    paths = (paths * 3)[: PICTURES_PER_PASS * 2 + 3]
    held = []
    named = identifier._named
    monkeypatch.setattr(
        identifier, "_named", lambda found, **kw: held.append(len(found)) or named(found, **kw)
    )
    together = identifier.identify_files(paths)
    assert max(held) == PICTURES_PER_PASS and sum(held) == len(paths)  # crops held at once
    assert [r.to_json() for r in together] == [identifier.identify_file(p).to_json() for p in paths]


def test_a_served_request_over_max_pictures_gets_an_error_row_for_each(untrained):
    identifier = load_identifier(untrained, params_for(NAMES, max_pictures=3))
    picture = base64.b64encode((untrained / "data/faces/ao_blue/train_2.png").read_bytes()).decode()
    answers = identifier.identify_base64_rows([(picture, f"p{n}") for n in range(4)])
    assert [a.picture for a in answers] == ["p0", "p1", "p2", "p3"]
    assert all(a.status == "error" and "identify.max_pictures (3)" in a.error for a in answers)
    answers = identifier.identify_base64_rows([(picture, f"p{n}") for n in range(3)])
    assert [a.status for a in answers] == ["ok"] * 3


def test_pictures_over_the_byte_limit_are_refused_unread(untrained, tmp_path):
    identifier = load_identifier(untrained, params_for(NAMES, max_bytes=2048))
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
    assert big.stat().st_size > 2048
    result = identifier.identify_file(big)
    assert result.status == "error" and "too large" in result.error
    assert (
        "too large"
        in identifier.identify_base64(base64.b64encode(big.read_bytes()).decode(), "b").error
    )


def test_a_gallery_cut_with_other_crop_settings_is_refused_with_what_to_run(untrained):
    """Another crop.margin or crop.size frames faces unlike the gallery's crops: every
    score would drop silently, so identify refuses until the project is rebuilt."""
    params = params_for(NAMES)
    assert load_identifier(untrained, params).gallery.meta["crop"]["margin"] == params.crop.margin
    for change in ({"margin": params.crop.margin + 0.1}, {"size": params.crop.size * 2}):
        other = params.model_copy(update={"crop": params.crop.model_copy(update=change)})
        with pytest.raises(StaleGallery, match=r"faces cut with crop.margin .*dvc repro"):
            load_identifier(untrained, other)


def test_base64_input_accepts_data_urls_and_rejects_garbage():
    data = b"\x89PNG whatever"
    encoded = base64.b64encode(data).decode()
    assert base64_bytes(encoded, 1000) == data
    assert base64_bytes(f"data:image/png;base64,{encoded}", 1000) == data
    for bad, reason in (("!!!not base64", "not base64"), ("", "no image"), (None, "no image")):
        with pytest.raises(ImageRejected, match=reason):
            base64_bytes(bad, 1000)


def test_base64_as_clients_commonly_send_it_is_accepted():
    """MIME-wrapped lines (Python's encodebytes, GNU base64 without -w0), CRLF, the URL-safe
    alphabet and missing padding: the same bytes."""
    data = bytes(range(256)) * 3
    standard = base64.b64encode(data).decode()
    for variant in (
        base64.encodebytes(data).decode(),
        base64.encodebytes(data).decode().replace("\n", "\r\n"),
        base64.urlsafe_b64encode(data).decode(),
        standard.rstrip("="),
        base64.b64encode(data[:-1]).decode().rstrip("="),
    ):
        assert base64_bytes(variant, 10_000) in (data, data[:-1])
    assert base64_bytes(base64.encodebytes(data).decode(), 10_000) == data
    with pytest.raises(ImageRejected, match="not base64"):
        base64_bytes(standard[:-5] + "*" + standard[-4:], 10_000)


def test_a_picture_without_faces_says_so(tmp_path, shared_dir, cascade_path):
    root = illustration_project(tmp_path / "project", shared_dir, cascade_path, per=1)
    identifier = load_identifier(root, params_for(GROUP, "lbp", str(cascade_path)))
    plain = tmp_path / "sky.png"
    gradient = np.linspace(80, 200, 200 * 300 * 3).reshape(200, 300, 3).astype(np.uint8)
    Image.fromarray(gradient).save(plain)
    result = identifier.identify_file(plain)
    assert result.status == "no_face" and result.faces == () and result.error is None
    assert (result.width, result.height) == (300, 200)
    validate_picture(result.to_json())


def test_detection_and_cropping_are_the_crop_stages(tmp_path, shared_dir, cascade_path):
    """Every face of a real picture is cut exactly as the crop stage cut it, so each one
    finds the crop stage's file of itself (similarity 1) and its character."""
    root = illustration_project(tmp_path / "project", shared_dir, cascade_path, per=2)
    params = params_for(GROUP, "lbp", str(cascade_path))
    identifier = load_identifier(root, params)
    result = identifier.identify_file(root / GROUP_PICTURE, "group.png")
    assert result.status == "ok" and len(result.faces) == 3

    # the crop stage's own result for that picture: same boxes, same squares
    detector = load_detector(root, params.crop)
    row = {"character": "x", "path": GROUP_PICTURE.as_posix()}
    fingerprint = settings_fingerprint(params.crop, detector)
    entry = crop_image(root, tmp_path, "f" * 64, row, params.crop, detector, fingerprint)
    stage = [
        ((f["x"], f["y"], f["w"], f["h"]), (f["crop_x"], f["crop_y"], f["crop_side"]))
        for f in entry["faces"]
    ]
    assert [(face.box, face.crop) for face in result.faces] == stage

    # and the embedded pixels are the crop stage's: each face finds its own crop file
    train = read_csv(root / layout.split_csv("train"))
    stage_crops = {r["path"]: r["character"] for r in train if r["source"] == row["path"]}
    assert len(stage_crops) == 3
    assert {face.neighbours[0].path for face in result.faces} == set(stage_crops)
    for face in result.faces:
        assert face.neighbours[0].similarity == pytest.approx(1.0, abs=1e-4)
        assert face.character == stage_crops[face.neighbours[0].path]
    assert {face.character for face in result.faces} == set(GROUP)
    document = report(identifier, [result])
    assert document["schema"] == "anime-face-id/identify/v1"
    assert document["model"]["detector"] == "lbp" and document["model"]["index"] == "exact"
    validate_picture(document["pictures"][0])


def test_annotate_boxes_known_and_unknown_faces_in_their_colours(untrained):
    identifier = load_identifier(untrained, params_for(NAMES))
    canvas = Image.new("RGB", (200, 120), (255, 255, 255))
    result = identifier.identify_image("blank", canvas)
    known = result.faces[0]
    left = replace(known, box=(10, 40, 60, 60), character="Ao Blue")
    right = replace(known, box=(120, 40, 60, 60), character=None)
    drawn = np.asarray(annotate(canvas, [left, right]))
    assert tuple(drawn[70, 10]) == KNOWN_COLOUR  # left edge of the first box
    assert tuple(drawn[70, 120]) == UNKNOWN_COLOUR
    assert tuple(drawn[70, 100]) == (255, 255, 255)  # between the boxes: untouched
    assert np.asarray(canvas).min() == 255  # the original is not drawn on


def labelled(name: str | None) -> FaceResult:
    return FaceResult((10, 40, 60, 60), (10, 40, 60), 0.9, name, 0.912, [], [])


def test_a_name_no_font_can_draw_leaves_the_number_and_score(monkeypatch):
    monkeypatch.setattr(annotating, "SYSTEM_FONTS", ())  # Pillow's own font: ASCII only
    assert label_and_font(1, labelled("黒子テツヤ"), 20)[0] == "1. 0.91"
    assert label_and_font(2, labelled("Kuroko"), 20)[0] == "2. Kuroko 0.91"
    assert label_and_font(3, labelled(None), 20)[0] == "3. unknown 0.91"


def test_a_system_font_draws_the_names_pillows_own_font_cannot():
    text, font = label_and_font(1, labelled("Émilie"), 20)
    if font is annotating._fonts(20)[-1]:
        pytest.skip("no system font here draws an accented Latin letter")
    assert text == "1. Émilie 0.91" and draws(font, text)
    assert not draws(annotating._default_font(20), "Émilie")
