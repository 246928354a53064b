"""The trained CenterNet detector shipped in the package: it loads strictly, finds a known
face where it was put, beats the cascade on the shared pictures, and is the default of the
crop stage, identify and the served model."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from anime_face_id.config import CropConfig
from anime_face_id.crop import crop_all
from anime_face_id.faces.boxes import matched
from anime_face_id.faces.centernet import WEIGHTS_FORMAT, FaceCenterNet
from anime_face_id.faces.detector_data import read_yolo_folder
from anime_face_id.faces.detectors import (
    PACKAGED_WEIGHTS,
    CenterNetDetector,
    Detector,
    DetectorWeightsError,
    load_detector,
)
from anime_face_id.imaging import load_rgb_array
from tests.support.synthetic import DESIGNS, DETECTED_NAMES, DETECTED_SIZE, drawn_face

# Floors well under what benchmarks/detection.py measured with the shipped weights (the
# model card has the figures), so a broken decoder, preprocessing or weights file fails.
SMALL_SET_RECALL_FLOOR = 0.5  # IoU 0.5, the 30 labelled frames of testdata/detection
RAW_WITH_FACE_FLOOR = 0.88  # illustrations of testdata/raw with at least one face


@pytest.fixture(scope="module")
def detector() -> CenterNetDetector:
    return CenterNetDetector()


def test_packaged_weights_load_with_every_key_matched() -> None:
    payload = torch.load(PACKAGED_WEIGHTS, map_location="cpu", weights_only=True)
    assert payload["format"] == WEIGHTS_FORMAT
    expected = FaceCenterNet().state_dict()
    assert set(payload["state_dict"]) == set(expected)
    for key, value in payload["state_dict"].items():
        assert value.shape == expected[key].shape, key
    assert PACKAGED_WEIGHTS.stat().st_size < 10_000_000
    assert (PACKAGED_WEIGHTS.parent / "MODEL_CARD.md").is_file()


def test_default_crop_detector_is_the_trained_one(tmp_path: Path, detector) -> None:
    loaded = load_detector(tmp_path, CropConfig())
    assert isinstance(loaded, CenterNetDetector) and isinstance(loaded, Detector)
    assert loaded.settings == detector.settings
    assert set(loaded.settings) == {"name", "weights_sha256", "input_size", "min_score", "nms_iou"}
    stricter = load_detector(tmp_path, CropConfig(min_score=0.6))
    assert stricter.settings != loaded.settings


def iou_share_inside(box: tuple, square: tuple) -> float:
    """The share of ``box``'s area that lies inside ``square`` (both x, y, w, h)."""
    x, y, w, h = box
    sx, sy, sw, sh = square
    across = max(0.0, min(x + w, sx + sw) - max(x, sx))
    down = max(0.0, min(y + h, sy + sh) - max(y, sy))
    return across * down / (w * h)


def paste(background: np.ndarray, face: np.ndarray, x: int, y: int, side: int) -> np.ndarray:
    import cv2

    picture = background.copy()
    picture[y : y + side, x : x + side] = cv2.resize(face, (side, side))
    return picture


@pytest.mark.parametrize("character", ["hatsune_miku", "suzumiya_haruhi", "gawr_gura"])
def test_a_known_face_is_found_where_it_was_put(detector, shared_dir: Path, character) -> None:
    face = load_rgb_array(sorted((shared_dir / "testdata" / "identities" / character).iterdir())[0])
    rng = np.random.default_rng(0)
    background = rng.integers(60, 120, (480, 640, 3), dtype=np.uint8)
    x, y, side = 300, 120, 200
    found = detector.detect(paste(background, face, x, y, side))
    assert found, "no face found"
    best = found[0]
    centre = (best.x + best.w / 2, best.y + best.h / 2)
    assert x < centre[0] < x + side and y < centre[1] < y + side
    # The face, not the whole crop around it: a box inside the pasted square, of a face's
    # size (the crops frame a face with hair and shoulders, so it is a part of the square).
    inside = iou_share_inside(best.box, (x, y, side, side))
    assert inside > 0.9, inside
    assert 0.3 * side < (best.w * best.h) ** 0.5 < 1.05 * side
    assert all(d.score >= detector.min_score for d in found)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_generated_designs_that_fixtures_crop_are_found(detector, seed) -> None:
    """Pipeline tests crop generated pictures of DETECTED_NAMES with these weights; new
    weights that stop finding them fail here, by name, not in a distant pipeline test."""
    rng = np.random.default_rng(seed)
    for name in DETECTED_NAMES:
        found = [
            len(detector.detect(drawn_face(rng, DESIGNS[name], DETECTED_SIZE))) for _ in range(8)
        ]
        assert sum(count >= 1 for count in found) >= 7, (name, found)


def test_nothing_is_found_in_a_flat_picture(detector) -> None:
    assert detector.detect(np.full((240, 320, 3), 128, np.uint8)) == []


def test_tiny_and_odd_pictures_are_handled(detector) -> None:
    for shape in ((1, 1, 3), (7, 500, 3), (33, 17, 3)):
        for d in detector.detect(np.zeros(shape, np.uint8)):
            assert d.x >= 0 and d.y >= 0 and d.x + d.w <= shape[1] and d.y + d.h <= shape[0]
    with pytest.raises(ValueError, match="RGB"):
        detector.detect(np.zeros((10, 10), np.uint8))


def test_detections_are_deterministic_across_threads_and_pickling(detector, shared_dir) -> None:
    pictures = [
        load_rgb_array(p) for p in sorted((shared_dir / "testdata" / "raw").glob("*/*.jpg"))[:6]
    ]
    sequential = [detector.detect(rgb) for rgb in pictures]
    assert any(sequential)
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(detector.detect, pictures)) == sequential
    copy = pickle.loads(pickle.dumps(detector))
    assert copy.settings == detector.settings and copy.detect(pictures[0]) == sequential[0]


def test_missing_or_foreign_weights_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DetectorWeightsError, match="not found"):
        load_detector(tmp_path, CropConfig(detector_weights="models/nope.pt"))
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(DetectorWeightsError, match=r"bad\.pt: not a PyTorch weights file"):
        load_detector(tmp_path, CropConfig(detector_weights="bad.pt"))
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(DetectorWeightsError, match=r"empty\.pt: it is empty"):
        load_detector(tmp_path, CropConfig(detector_weights="empty.pt"))
    torch.save({"format": "something else"}, tmp_path / "foreign.pt")
    with pytest.raises(DetectorWeightsError, match=r"foreign\.pt is not a CenterNet face detector"):
        load_detector(tmp_path, CropConfig(detector_weights="foreign.pt"))


# ------------------------------------------------------------- quality on real pictures


def test_recall_on_the_labelled_frames_beats_the_cascade(detector, shared_dir, cascade_path):
    from anime_face_id.faces.detectors import LbpCascadeDetector

    items = read_yolo_folder(shared_dir / "testdata" / "detection")
    cascade = LbpCascadeDetector(cascade_path)
    hits = {"centernet": 0, "lbp": 0}
    total = 0
    for item in items:
        rgb = load_rgb_array(item.path)
        truths = [tuple(b) for b in item.boxes.tolist()]
        total += len(truths)
        hits["centernet"] += matched(truths, [d.box for d in detector.detect(rgb)], 0.5)
        hits["lbp"] += matched(truths, [d.box for d in cascade.detect(rgb)], 0.5)
    print(f"recall at IoU 0.5 on {total} faces: {hits}")
    assert hits["centernet"] / total >= SMALL_SET_RECALL_FLOOR
    assert hits["centernet"] > 5 * max(hits["lbp"], 1)


@pytest.mark.slow
def test_a_face_is_found_in_nearly_every_illustration(detector, shared_dir: Path) -> None:
    images = sorted((shared_dir / "testdata" / "raw").glob("*/*.jpg"))
    with_face = sum(1 for image in images if detector.detect(load_rgb_array(image)))
    print(f"centernet: {with_face}/{len(images)} illustrations with a face")
    assert with_face / len(images) >= RAW_WITH_FACE_FLOOR


# ------------------------------------------------------------- the stages that use it


@pytest.mark.slow
def test_crop_stage_with_the_default_detector(tmp_path: Path, shared_dir: Path) -> None:
    from tests.test_crop import RawData, manifest, rejects

    data = RawData(tmp_path)
    for source in sorted((shared_dir / "testdata" / "raw" / "sakurauchi_riko").glob("*.jpg"))[:6]:
        data.add("Sakurauchi Riko", source.read_bytes(), ext="jpg")
    data.add_image("Sakurauchi Riko", np.full((200, 300, 3), 200, dtype=np.uint8))
    data.write()
    config = CropConfig(size=96, workers=2)
    (result,) = crop_all(tmp_path, config)
    assert result.images == 7 and result.with_face >= 5
    assert any(row["reason"] == "no face detected" for row in rejects(tmp_path))
    rows = manifest(tmp_path)
    assert rows and all(row["detector"] == "centernet" for row in rows)
    assert all(float(row["score"]) >= config.min_score for row in rows)
    for row in rows:
        crop = load_rgb_array(tmp_path / row["path"])
        assert crop.shape == (96, 96, 3)
        x, y, w, h = (int(row[k]) for k in ("x", "y", "w", "h"))
        cx, cy, side = (int(row[k]) for k in ("crop_x", "crop_y", "crop_side"))
        assert cx <= x and x + w <= cx + side and cy <= y and y + h <= cy + side


def test_the_served_model_bundles_the_detector_weights(tmp_path: Path, shared_dir: Path) -> None:
    """IdentifierModel.load_context with the artifacts MLflow would hand it: the weights
    come from the bundle, not from the package on this machine."""
    import json
    import shutil

    from tests.test_identify import NAMES, make_untrained_project, params_for
    from tracking.identifier_model import IdentifierModel, _settings

    root = make_untrained_project(tmp_path / "project")
    params = params_for(NAMES).model_copy(update={"crop": CropConfig(size=64)})
    bundled = tmp_path / "bundle" / "detector.pt"
    bundled.parent.mkdir()
    shutil.copyfile(PACKAGED_WEIGHTS, bundled)
    settings = tmp_path / "bundle" / "settings.json"
    settings.write_text(json.dumps(_settings(params)))
    assert "detector_weights" not in json.loads(settings.read_text())["crop"]
    model = IdentifierModel()
    model.load_context(
        SimpleNamespace(
            artifacts={
                "checkpoint": str(root / "models" / "embedder.pt"),
                "gallery": str(root / "models" / "gallery.npz"),
                "settings": str(settings),
                "detector_weights": str(bundled),
            }
        )
    )
    assert model.identifier.detector.weights == bundled
    assert model.identifier.detector.settings["name"] == "centernet"
