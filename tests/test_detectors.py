"""Detectors on real pictures, and getting the cascade file (fetched from a local server)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import pickle
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from anime_face_id.config import CropConfig
from anime_face_id.faces.boxes import from_yolo, matched
from anime_face_id.faces.cascade import (
    CASCADE_CACHE,
    CASCADE_SHA256,
    CascadeError,
    fetch_cascade,
    resolve_cascade,
)
from anime_face_id.faces.detectors import (
    Detection,
    Detector,
    LbpCascadeDetector,
    WholeImageDetector,
    load_cascade,
    load_detector,
)
from anime_face_id.imaging import load_rgb_array

# Measured with the author's parameters (scaleFactor 1.1, minNeighbors 5, minSize 24):
# 1 of 53 labelled faces at IoU 0.5 and 16 of 53 at IoU 0.3. The cascade finds most of the
# faces it finds with a box that includes the hair (about 1.6x the labelled side), while
# these labels are tight eye-to-chin boxes, so IoU 0.5 is rarely reached even by a correct
# detection; IoU 0.3 is the figure that moves when detection quality moves.
RECALL_FLOOR_IOU50 = 0.015
RECALL_FLOOR_IOU30 = 0.28
# Measured: 109 of 127 illustrations (0.858) yield at least one face.
RAW_WITH_FACE_FLOOR = 0.83


@pytest.fixture(scope="module")
def lbp(cascade_path: Path) -> LbpCascadeDetector:
    return LbpCascadeDetector(cascade_path)


def yolo_truths(label: Path, width: int, height: int) -> list[tuple[float, ...]]:
    boxes = []
    for line in label.read_text().splitlines():
        if line.strip():
            _cls, cx, cy, w, h = line.split()
            boxes.append(from_yolo(float(cx), float(cy), float(w), float(h), width, height))
    return boxes


# ------------------------------------------------------------- the interface


def test_both_detectors_satisfy_the_protocol(lbp: LbpCascadeDetector) -> None:
    assert isinstance(lbp, Detector)
    assert isinstance(WholeImageDetector(), Detector)
    assert lbp.name == "lbp" and WholeImageDetector().name == "none"


def test_whole_image_detector_returns_the_full_frame() -> None:
    rgb = np.zeros((120, 300, 3), dtype=np.uint8)
    assert WholeImageDetector().detect(rgb) == [Detection(0, 0, 300, 120, 1.0)]


def test_detectors_refuse_arrays_that_are_not_rgb(lbp: LbpCascadeDetector) -> None:
    for bad in (np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8)):
        with pytest.raises(ValueError, match="RGB"):
            lbp.detect(bad)
        with pytest.raises(ValueError, match="RGB"):
            WholeImageDetector().detect(bad)


def test_lbp_settings_name_the_parameters_and_the_cascade(cascade_path: Path) -> None:
    settings = LbpCascadeDetector(cascade_path, 1.2, 3, 40).settings
    assert settings["cascade_sha256"] == CASCADE_SHA256
    assert (settings["scale_factor"], settings["min_neighbors"], settings["min_size"]) == (
        1.2,
        3,
        40,
    )


def test_lbp_finds_nothing_in_a_flat_image(lbp: LbpCascadeDetector) -> None:
    assert lbp.detect(np.full((240, 320, 3), 128, dtype=np.uint8)) == []


# ------------------------------------------------------------- quality on real pictures


def test_lbp_recall_on_the_labelled_detection_set(lbp, shared_dir: Path) -> None:
    folder = shared_dir / "testdata" / "detection"
    truths_total = hits_50 = hits_30 = 0
    for image in sorted((folder / "images").glob("*.jpg")):
        rgb = load_rgb_array(image)
        truths = yolo_truths(folder / "labels" / f"{image.stem}.txt", rgb.shape[1], rgb.shape[0])
        found = [d.box for d in lbp.detect(rgb)]
        truths_total += len(truths)
        hits_50 += matched(truths, found, 0.5)
        hits_30 += matched(truths, found, 0.3)
    recall_50, recall_30 = hits_50 / truths_total, hits_30 / truths_total
    print(
        f"lbp recall: IoU0.5 {hits_50}/{truths_total} = {recall_50:.3f}, "
        f"IoU0.3 {hits_30}/{truths_total} = {recall_30:.3f}"
    )
    assert truths_total >= 50
    assert recall_50 >= RECALL_FLOOR_IOU50
    assert recall_30 >= RECALL_FLOOR_IOU30


@pytest.mark.slow
def test_lbp_finds_a_face_in_most_illustrations(lbp, shared_dir: Path) -> None:
    images = sorted((shared_dir / "testdata" / "raw").glob("*/*.jpg"))
    with_face = sum(1 for image in images if lbp.detect(load_rgb_array(image)))
    share = with_face / len(images)
    print(f"lbp: {with_face}/{len(images)} illustrations ({share:.3f}) with at least one face")
    assert len(images) >= 100
    assert share >= RAW_WITH_FACE_FLOOR


def test_lbp_is_deterministic_and_safe_across_threads(lbp, shared_dir: Path) -> None:
    images = sorted((shared_dir / "testdata" / "raw").glob("*/*.jpg"))[:8]
    arrays = [load_rgb_array(image) for image in images]
    sequential = [lbp.detect(rgb) for rgb in arrays]
    assert any(sequential), "expected faces in the first illustrations"
    with ThreadPoolExecutor(4) as pool:
        for _ in range(2):
            assert list(pool.map(lbp.detect, arrays)) == sequential
    for found in sequential:
        assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
        for d in found:
            assert all(isinstance(v, int) for v in d.box) and isinstance(d.score, float)


def test_lbp_detector_survives_pickling(lbp, shared_dir: Path) -> None:
    # Prefect hashes task inputs and process/cluster runners ship them to workers.
    rgb = load_rgb_array(sorted((shared_dir / "testdata" / "raw").glob("*/*.jpg"))[0])
    expected = lbp.detect(rgb)
    copy = pickle.loads(pickle.dumps(lbp))
    assert copy.settings == lbp.settings
    assert copy.detect(rgb) == expected and expected


def test_stricter_parameters_find_no_more_faces(cascade_path: Path, shared_dir: Path) -> None:
    images = sorted((shared_dir / "testdata" / "raw").glob("*/*.jpg"))[:10]
    default = LbpCascadeDetector(cascade_path)
    strict = LbpCascadeDetector(cascade_path, min_neighbors=12, min_size=120)
    arrays = [load_rgb_array(image) for image in images]
    assert sum(map(len, map(strict.detect, arrays))) < sum(map(len, map(default.detect, arrays)))


# ------------------------------------------------------------- loading the cascade


def test_missing_cascade_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CascadeError, match="not found"):
        LbpCascadeDetector(tmp_path / "nope.xml")


def test_a_file_that_is_not_a_cascade_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.xml"
    bogus.write_text("<opencv_storage><nothing/></opencv_storage>")
    with pytest.raises(CascadeError, match="not an OpenCV cascade"):
        load_cascade(bogus)


def test_configured_cascade_path_is_used_and_checked(tmp_path: Path, cascade_path) -> None:
    assert resolve_cascade(tmp_path, str(cascade_path)) == cascade_path
    with pytest.raises(CascadeError, match=r"crop\.cascade"):
        resolve_cascade(tmp_path, "models/missing.xml")
    config = CropConfig(detector="lbp", cascade=str(cascade_path))
    assert load_detector(tmp_path, config).settings["cascade_sha256"] == CASCADE_SHA256
    assert not (tmp_path / CASCADE_CACHE).exists()  # nothing fetched
    assert load_detector(tmp_path, CropConfig(detector="none")).name == "none"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output readable
        pass


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """serve(files) -> base URL of a 127.0.0.1 server holding {name: bytes}."""
    servers = []

    def start(files: dict[str, bytes]) -> str:
        folder = tmp_path / f"site{len(servers)}"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_fetch_downloads_and_verifies_the_cascade(serve, tmp_path, cascade_path) -> None:
    base = serve({"lbpcascade_animeface.xml": cascade_path.read_bytes()})
    root = tmp_path / "project"
    fetched = resolve_cascade(root, None, url=f"{base}/lbpcascade_animeface.xml")
    assert fetched == root / CASCADE_CACHE
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == CASCADE_SHA256
    assert not load_cascade(fetched).empty()
    # A verified cached copy is used as is: an unreachable URL is never contacted.
    again = resolve_cascade(root, None, url="http://127.0.0.1:9/unreachable.xml")
    assert again == fetched


def test_fetch_refuses_a_file_with_the_wrong_sha256(serve, tmp_path, cascade_path) -> None:
    tampered = cascade_path.read_bytes().replace(b"<maxWeakCount>", b"<maxWeakCount> ", 1)
    base = serve({"lbpcascade_animeface.xml": tampered})
    destination = tmp_path / "cache" / "lbpcascade_animeface.xml"
    with pytest.raises(CascadeError, match="sha256"):
        fetch_cascade(destination, url=f"{base}/lbpcascade_animeface.xml")
    assert not destination.exists()
    assert not destination.parent.exists() or not any(destination.parent.iterdir())


def test_a_corrupted_cache_is_replaced_by_a_verified_download(serve, tmp_path, cascade_path):
    destination = tmp_path / "lbpcascade_animeface.xml"
    destination.write_text("truncated")
    base = serve({"c.xml": cascade_path.read_bytes()})
    fetch_cascade(destination, url=f"{base}/c.xml")
    assert destination.read_bytes() == cascade_path.read_bytes()


def test_fetch_reports_http_errors(serve, tmp_path) -> None:
    base = serve({})
    with pytest.raises(CascadeError, match="HTTP 404"):
        fetch_cascade(tmp_path / "c.xml", url=f"{base}/missing.xml", attempts=1)
    with pytest.raises(CascadeError, match="cannot fetch"):
        fetch_cascade(
            tmp_path / "c.xml",
            url="http://127.0.0.1:9/x.xml",
            attempts=2,
            backoff_s=0.01,
            timeout_s=2,
        )
    assert not (tmp_path / "c.xml").exists()
