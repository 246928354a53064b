"""The CenterNet face detector: decoding and NMS against brute-force references, targets
that decode back to their boxes, the loss, and a short real training run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from anime_face_id.errors import StageError
from anime_face_id.faces.boxes import iou
from anime_face_id.faces.centernet import (
    STRIDE,
    STRIDES,
    WEIGHTS_FORMAT,
    FaceCenterNet,
    box_iou,
    decode,
    load_weights,
    nms,
    prepare_input,
    save_weights,
)
from anime_face_id.faces.detector_data import (
    BOX_AREA_SHARE,
    DetectorDataError,
    FaceCrop,
    ViewSettings,
    centred_face,
    clip_boxes,
    close_up_view,
    encode_targets,
    paste_faces,
    pseudo_label,
    random_view,
    read_labelled_frames,
    read_yolo_folder,
    split_validation,
    training_view,
)
from anime_face_id.faces.detector_train import (
    DetectorTrainConfig,
    data_fingerprint,
    detection_loss,
    focal_loss,
    generalised_iou,
    giou_loss,
    grow_to_finer_stride,
    resume_state_path,
    saved_state,
    train_detector,
)
from anime_face_id.faces.detectors import PACKAGED_WEIGHTS
from anime_face_id.faces.view_pool import ViewPool, seeded_view
from anime_face_id.fileio import file_sha256
from anime_face_id.transforms import normalise

REPO = Path(__file__).resolve().parents[1]


def random_boxes(rng: np.random.Generator, count: int, size: float = 100.0) -> torch.Tensor:
    xy = rng.uniform(0, size, (count, 2))
    wh = rng.uniform(2, size / 2, (count, 2))
    return torch.tensor(np.hstack([xy, wh]), dtype=torch.float32)


# ------------------------------------------------------------------ geometry


@pytest.mark.parametrize("seed", range(5))
def test_box_iou_matches_the_scalar_iou(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = random_boxes(rng, 7), random_boxes(rng, 5)
    table = box_iou(a, b)
    for i in range(len(a)):
        for j in range(len(b)):
            assert table[i, j].item() == pytest.approx(iou(a[i].tolist(), b[j].tolist()), abs=1e-5)


def reference_nms(boxes: list, scores: list, threshold: float) -> list[int]:
    """Greedy NMS as the textbook writes it."""
    remaining = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    kept = []
    while remaining:
        best = remaining.pop(0)
        kept.append(best)
        remaining = [i for i in remaining if iou(boxes[best], boxes[i]) <= threshold]
    return kept


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.8])
def test_nms_matches_a_brute_force_reference(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 30, size=60.0)
    scores = torch.tensor(rng.uniform(0, 1, 30), dtype=torch.float32)
    kept = nms(boxes, scores, threshold).tolist()
    assert kept == reference_nms(boxes.tolist(), scores.tolist(), threshold)


def test_nms_of_nothing_is_nothing() -> None:
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


def reference_decode(heat, size, offset, top_k, min_score, stride=STRIDE):
    """Loop over every cell: a peak is >= each of its 3 x 3 neighbours."""
    scores = 1 / (1 + np.exp(-heat))
    rows, cols = scores.shape
    found = []
    for r in range(rows):
        for c in range(cols):
            window = scores[max(0, r - 1) : r + 2, max(0, c - 1) : c + 2]
            if scores[r, c] >= window.max() and scores[r, c] >= min_score:
                w = math.exp(size[0, r, c]) * stride
                h = math.exp(size[1, r, c]) * stride
                cx = (c + offset[0, r, c]) * stride
                cy = (r + offset[1, r, c]) * stride
                found.append((scores[r, c], (cx - w / 2, cy - h / 2, w, h)))
    found.sort(key=lambda item: -item[0])
    return found[:top_k]


@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("seed", range(5))
def test_decode_matches_a_brute_force_reference(seed: int, stride: int) -> None:
    rng = np.random.default_rng(seed)
    heat = rng.normal(-1, 2, (2, 1, 9, 11)).astype(np.float32)
    size = rng.normal(0, 1, (2, 2, 9, 11)).astype(np.float32)
    offset = rng.uniform(0, 1, (2, 2, 9, 11)).astype(np.float32)
    results = decode(
        torch.from_numpy(heat),
        torch.from_numpy(size),
        torch.from_numpy(offset),
        top_k=12,
        min_score=0.4,
        stride=stride,
    )
    for index, (boxes, scores) in enumerate(results):
        expected = reference_decode(heat[index, 0], size[index], offset[index], 12, 0.4, stride)
        assert len(boxes) == len(expected)
        np.testing.assert_allclose(scores.numpy(), [s for s, _ in expected], rtol=1e-5)
        np.testing.assert_allclose(boxes.numpy(), [b for _, b in expected], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("stride", STRIDES)
def test_targets_decode_back_to_their_boxes(stride: int) -> None:
    boxes = np.array([[10.5, 20.25, 40, 30], [120, 64, 90, 120], [200, 200, 17, 23]], np.float32)
    targets = encode_targets(boxes, 256, stride)
    assert targets["heatmap"].shape == (1, 256 // stride, 256 // stride)
    assert targets["mask"].sum() == 3 and targets["heatmap"].max() == 1.0
    logits = torch.from_numpy(
        np.log(targets["heatmap"] + 1e-9) - np.log1p(-targets["heatmap"] + 1e-6)
    )
    ((found, _scores),) = decode(
        logits[None],
        torch.from_numpy(targets["log_size"])[None],
        torch.from_numpy(targets["offset"])[None],
        min_score=0.99,
        stride=stride,
    )
    assert len(found) == 3
    for box in boxes:
        assert max(iou(box.tolist(), f.tolist()) for f in found) > 0.99


@pytest.mark.parametrize("stride", STRIDES)
def test_every_central_cell_sees_its_face_box(stride: int) -> None:
    boxes = np.array([[10.5, 20.25, 40, 30], [120, 64, 90, 120], [200, 200, 17, 23]], np.float32)
    targets = encode_targets(boxes, 256, stride)
    weight = targets["box_weight"]
    assert weight.sum() == pytest.approx(3.0)  # each face's weights sum to 1
    assert (weight[targets["mask"] == 1] > 0).all()  # the centre cell is always among them
    cells_per_face = [0, 0, 0]
    for row, col in zip(*np.nonzero(weight), strict=True):
        dx, dy = targets["box_offset"][:, row, col]
        w, h = np.exp(targets["box_log_size"][:, row, col]) * stride
        seen = [(col + dx) * stride - w / 2, (row + dy) * stride - h / 2, w, h]
        face = max(range(3), key=lambda i: iou(boxes[i].tolist(), seen))
        assert iou(boxes[face].tolist(), seen) > 0.999
        cells_per_face[face] += 1
        x, y, fw, fh = boxes[face]
        centre = targets["mask"][row, col] == 1
        assert centre or abs((col + 0.5) * stride - x - fw / 2) <= BOX_AREA_SHARE * fw / 2
        assert centre or abs((row + 0.5) * stride - y - fh / 2) <= BOX_AREA_SHARE * fh / 2
    assert cells_per_face[1] > cells_per_face[0] > cells_per_face[2] >= 1


def test_overlapping_faces_keep_each_centre_cell_to_its_own_box() -> None:
    # the small face's central area covers the large face's centre cell (12, 12)
    boxes = np.array([[40, 40, 120, 120], [84, 84, 40, 40]], np.float32)
    targets = encode_targets(boxes, 256)
    centres = np.nonzero(targets["mask"])
    assert len(centres[0]) == 2
    np.testing.assert_allclose(
        targets["box_log_size"][:, centres[0], centres[1]],
        targets["log_size"][:, centres[0], centres[1]],
    )
    np.testing.assert_allclose(
        targets["box_offset"][:, centres[0], centres[1]],
        targets["offset"][:, centres[0], centres[1]],
    )
    small = targets["box_log_size"][0] == np.float32(math.log(40 / STRIDE))
    assert small.sum() > 1 and targets["box_weight"][small].sum() == pytest.approx(1.0)


def reference_giou(a: list[int], b: list[int]) -> float:
    """GIoU of integer ``x0, y0, x1, y1`` boxes by counting unit squares."""
    left, top = min(a[0], b[0]), min(a[1], b[1])
    right, bottom = max(a[2], b[2]), max(a[3], b[3])
    ys, xs = np.mgrid[top:bottom, left:right]
    in_a = (xs >= a[0]) & (xs < a[2]) & (ys >= a[1]) & (ys < a[3])
    in_b = (xs >= b[0]) & (xs < b[2]) & (ys >= b[1]) & (ys < b[3])
    union, hull = (in_a | in_b).sum(), xs.size
    return (in_a & in_b).sum() / union - (hull - union) / hull


@pytest.mark.parametrize("seed", range(4))
def test_generalised_iou_matches_counting_squares(seed: int) -> None:
    rng = np.random.default_rng(seed)
    corners = rng.integers(0, 30, (40, 2, 2))
    starts, sizes = corners[:, :, 0], corners[:, :, 1] % 12 + 1
    boxes = np.hstack([starts, starts + sizes])  # x0, y0, x1, y1, never empty
    a, b = boxes[:20], boxes[20:]
    found = generalised_iou(
        torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    )
    expected = [reference_giou(list(x), list(y)) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(found.numpy(), expected, atol=1e-12)
    assert (found < 0).any()  # disjoint pairs are in the sample, where IoU alone says 0


def test_the_giou_loss_is_zero_for_the_true_boxes_and_grows_with_the_error() -> None:
    boxes = np.array([[30, 40, 50, 60], [150, 100, 24, 20]], np.float32)
    targets = {k: torch.from_numpy(v)[None] for k, v in encode_targets(boxes, 256).items()}
    size, offset = targets["box_log_size"], targets["box_offset"]
    losses = [
        float(giou_loss(size + error, offset + error, targets)) for error in (0.0, 0.1, 0.3, 0.9)
    ]
    assert losses[0] == pytest.approx(0.0, abs=1e-6)
    assert losses == sorted(losses) and losses[-1] > 0.3
    outputs = (targets["heatmap"], size + 0.3, offset)
    plain, parts = detection_loss(outputs, targets, giou_weight=0.0)
    weighted, _ = detection_loss(outputs, targets, giou_weight=2.0)
    assert float(weighted - plain) == pytest.approx(2 * parts["giou"], rel=1e-5)
    empty = {k: torch.from_numpy(v)[None] for k, v in encode_targets(np.zeros((0, 4)), 64).items()}
    assert float(giou_loss(empty["box_log_size"], empty["box_offset"], empty)) == 0.0


def test_views_keep_faces_whose_centre_stays_and_clip_them() -> None:
    boxes = np.array([[-10, 10, 40, 40], [-30, 10, 40, 40], [85, 85, 20, 20]], np.float32)
    clipped = clip_boxes(boxes, 100)
    np.testing.assert_allclose(clipped, [[0, 10, 30, 40], [85, 85, 15, 15]])
    rng = np.random.default_rng(0)
    picture = np.zeros((100, 200, 3), np.uint8)
    picture[40:60, 90:110] = 255  # the "face" is the white square
    for _ in range(20):
        view, moved = random_view(
            picture, np.array([[90, 40, 20, 20]], np.float32), rng, 128, (64, 256)
        )
        assert view.shape == (128, 128, 3)
        for x, y, w, h in moved:  # the box still frames white pixels
            centre = view[int(y + h / 2), int(x + w / 2)]
            assert centre.min() > 200


def write_crop_with_a_face(path: Path, width: int, height: int, face: tuple) -> FaceCrop:
    """A black crop whose "face" is a white rectangle at ``face`` (shares of the crop)."""
    x, y, w, h = face
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[
        round(y * height) : round((y + h) * height), round(x * width) : round((x + w) * width)
    ] = 255
    Image.fromarray(pixels).save(path)
    return FaceCrop(path, face)


def assert_boxes_frame_white(view: np.ndarray, boxes: np.ndarray) -> None:
    for x, y, w, h in boxes:
        inner = view[int(y + h * 0.25) : int(y + h * 0.75), int(x + w * 0.25) : int(x + w * 0.75)]
        assert inner.size and inner.min() > 200, (x, y, w, h)


def test_pasted_faces_are_labelled_where_their_face_lands(tmp_path: Path) -> None:
    crop = write_crop_with_a_face(tmp_path / "crop.png", 90, 120, (0.1, 0.5, 0.4, 0.3))
    rng = np.random.default_rng(0)
    for _ in range(20):  # mirrored half of the time
        canvas = np.full((160, 160, 3), 100, np.uint8)
        view, boxes = paste_faces(canvas, np.zeros((0, 4), np.float32), [crop], rng, 1, (40, 120))
        assert len(boxes) == 1
        assert_boxes_frame_white(view, boxes)


def test_close_up_views_frame_the_face(tmp_path: Path) -> None:
    crop = write_crop_with_a_face(tmp_path / "crop.png", 96, 96, (0.3, 0.35, 0.5, 0.5))
    rng = np.random.default_rng(1)
    sizes = []
    for _ in range(30):
        view, boxes = close_up_view(crop, rng, 128)
        assert_boxes_frame_white(view, boxes)
        sizes.extend(boxes[:, 2])
    assert max(sizes) > 100  # faces nearly as large as the view, which frames rarely give


def test_pseudo_labels_are_the_detection_mapped_back_onto_the_crop(tmp_path: Path) -> None:
    crop = write_crop_with_a_face(tmp_path / "crop.png", 80, 100, (0.25, 0.1, 0.5, 0.6))

    def white_box(score: float):
        def detect(rgb: np.ndarray) -> list:  # finds the white pixels exactly
            ys, xs = np.nonzero(rgb[:, :, 0] == 255)
            box = (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
            return [(*map(float, box), score)]

        return detect

    labelled = pseudo_label(crop.path, white_box(0.9), min_score=0.4)
    assert labelled is not None and labelled.path == crop.path
    np.testing.assert_allclose(labelled.box, crop.box, atol=0.02)
    assert pseudo_label(crop.path, white_box(0.3), min_score=0.4) is None
    assert pseudo_label(crop.path, lambda rgb: [], min_score=0.4) is None


def test_focal_loss_rewards_the_right_heatmap() -> None:
    target = torch.from_numpy(
        encode_targets(np.array([[32, 32, 32, 32]], np.float32), 128)["heatmap"]
    )
    right = torch.logit(target.clamp(1e-4, 1 - 1e-4))
    wrong = torch.logit((1 - target).clamp(1e-4, 1 - 1e-4))
    assert focal_loss(right[None], target[None]) < 0.05 < focal_loss(wrong[None], target[None])


def test_input_is_scaled_to_the_longest_side_and_padded_to_32() -> None:
    batch, scale = prepare_input(np.zeros((300, 500, 3), np.uint8), 320)
    assert scale == pytest.approx(320 / 500) and batch.shape == (1, 3, 192, 320)


# ------------------------------------------------------------------ training


def write_yolo_folder(root: Path, count: int) -> Path:
    """Grey pictures with one or two bright ellipses ("faces") and their YOLO labels."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for index in range(count):
        picture = np.full((96, 128, 3), 90, np.uint8)
        lines = []
        for _ in range(1 + index % 2):
            w, h = (int(v) for v in rng.integers(16, 40, 2))
            x, y = int(rng.integers(0, 128 - w)), int(rng.integers(0, 96 - h))
            picture[y : y + h, x : x + w] = (250, 220, 200)
            lines.append(f"0 {(x + w / 2) / 128} {(y + h / 2) / 96} {w / 128} {h / 96}")
        Image.fromarray(picture).save(root / "images" / f"{index:03d}.jpg")
        (root / "labels" / f"{index:03d}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("frame_scale", [(0.5, 0.5), (1.5, 1.5), (0.75, 2.0)])
def test_frame_views_scale_the_frame_within_frame_scale_times_the_view(
    tmp_path: Path, frame_scale: tuple[float, float]
) -> None:
    folder = write_yolo_folder(tmp_path / "frames", 1)  # 128 px wide, one face
    item = read_labelled_frames(folder).items[0]
    settings = ViewSettings(64, 0.0, 0.0, STRIDE, frame_scale)
    rng = np.random.default_rng(3)
    scales = []
    for _ in range(40):
        _view, targets = training_view(item, [], rng, settings)
        for row, col in zip(*np.nonzero(targets["mask"]), strict=True):
            width, height = np.exp(targets["log_size"][:, row, col]) * STRIDE
            centre = (np.array([col, row]) + targets["offset"][:, row, col]) * STRIDE
            half = np.array([width, height]) / 2
            inside = np.all(centre - half > 0.5) and np.all(centre + half < 63.5)
            if inside:  # a clipped face is narrower than the frame's scale makes it
                scales.append(width / item.boxes[0, 2] * 128 / 64)  # longest side / view
    low, high = frame_scale
    assert scales and all(low - 0.02 <= scale <= high + 0.02 for scale in scales)
    if low < high:  # drawn across the range, not stuck at one end
        assert max(scales) / min(scales) > 1.5
    with pytest.raises(ValidationError, match="0 < LOW <= HIGH"):
        DetectorTrainConfig(frame_scale=(2.0, 1.0))


def test_labels_are_read_in_pixels_and_the_split_is_stable(tmp_path: Path) -> None:
    folder = write_yolo_folder(tmp_path / "frames", 40)
    (folder / "images" / "extra.jpg").write_bytes((folder / "images" / "000.jpg").read_bytes())
    items = read_yolo_folder(folder)
    assert len(items) == 41 and len(items[-1].boxes) == 0  # no label file: no faces
    first = items[0]
    assert first.boxes.shape == (1, 4) and 16 <= first.boxes[0, 2] <= 40
    train, val = split_validation(items, 0.25)
    _, val_again = split_validation(list(reversed(items)), 0.25)
    assert {i.path for i in val} == {i.path for i in val_again} and 0 < len(val) < 41
    assert not {i.path for i in train} & {i.path for i in val}


def test_bad_pictures_and_labels_are_left_out_with_their_reason(tmp_path: Path) -> None:
    folder = write_yolo_folder(tmp_path / "frames", 10)
    labels, images = folder / "labels", folder / "images"
    bad_labels = {
        "001": ("0 0.5 0.5 0.2\n", "001.txt line 1: 4 fields, not 5"),
        "002": ("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n", "002.txt line 2: class '7'"),
        "003": ("0 nan 0.5 0.2 0.2\n", "003.txt line 1: a coordinate is not finite"),
        "004": ("0 -0.5 1.7 0.2 0.2\n", "004.txt line 1: centre (-0.5, 1.7) outside"),
        "005": ("0 0.5 0.5 0 0.2\n", "005.txt line 1: size 0 x 0.2 not in (0, 1]"),
        "006": ("0,0.5,0.5,0.2,0.2\n", "006.txt line 1: 1 fields, not 5"),
    }
    for stem, (text, _) in bad_labels.items():
        (labels / f"{stem}.txt").write_text(text)
    (labels / "007.txt").write_bytes(b"0 0.5 0.5 0.2 0.2 \xff\n")
    whole = (images / "008.jpg").read_bytes()
    (images / "008.jpg").write_bytes(whole[: len(whole) // 3])  # truncated
    (images / "009.jpg").write_text("<html>not a picture</html>")
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")

    frames = read_labelled_frames(folder, workers=2)
    reasons = {item.path.stem: item.reason for item in frames.left_out}
    assert sorted(reasons) == ["001", "002", "003", "004", "005", "006", "007", "008", "009"]
    for stem, (_, reason) in bad_labels.items():
        assert reasons[stem].startswith(reason), reasons[stem]
    assert reasons["007"] == "007.txt: not UTF-8 text"
    assert "truncated" in reasons["008"].lower() and reasons["009"].startswith("not an")
    assert [item.path.stem for item in frames.items] == ["000"] and frames.orphan_labels == 1


def test_labels_follow_the_picture_as_exif_turns_it_upright(tmp_path: Path) -> None:
    """A 300 x 100 JPEG stored sideways (orientation 6: shown turned 90 degrees clockwise)
    is 100 wide and 300 high as training sees it; its normalised label is of that view."""
    (tmp_path / "frames" / "images").mkdir(parents=True)
    (tmp_path / "frames" / "labels").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (300, 100), "grey").save(tmp_path / "frames/images/a.jpg", exif=exif)
    (tmp_path / "frames/labels/a.txt").write_text("0 0.5 0.75 0.8 0.2\n")
    (item,) = read_yolo_folder(tmp_path / "frames")
    assert item.boxes.tolist() == [pytest.approx([10, 195, 80, 60])]


def test_frames_whose_labels_match_no_picture_are_refused(tmp_path: Path) -> None:
    folder = write_yolo_folder(tmp_path / "frames", 3)
    for label in (folder / "labels").iterdir():
        label.rename(label.with_name("x" + label.name))
    with pytest.raises(DetectorDataError, match=r"none of the 3 label files .* is named after"):
        read_yolo_folder(folder)
    for label in (folder / "labels").iterdir():
        label.unlink()
    (folder / "labels").rmdir()
    with pytest.raises(DetectorDataError, match="has no labels/ folder"):
        read_yolo_folder(folder)


def test_a_short_training_run_writes_weights_that_load_strictly(tmp_path: Path) -> None:
    frames = write_yolo_folder(tmp_path / "frames", 24)
    out = tmp_path / "detector.pt"
    seen = []
    config = DetectorTrainConfig(
        epochs=2,
        batch_size=4,
        view_size=96,
        input_size=128,
        max_steps=4,
        warmup_steps=1,
        val_fraction=0.25,
        min_score=0.05,
        giou_weight=5.0,
    )
    reports = train_detector(config, frames, out, on_epoch=seen.append)
    assert reports == seen and 1 <= len(reports) <= 2
    assert all(math.isfinite(r.loss) and 0 <= r.recall <= 1 for r in reports)
    assert all(0 < r.giou_loss < 2 for r in reports)
    model, metadata = load_weights(out)
    assert metadata["config"]["view_size"] == 96 and metadata["train_pictures"] > 0
    assert out.stat().st_size < 8_000_000  # half precision: the packaged file stays small
    heat, size, offset = model(torch.zeros(1, 3, 64, 96))
    assert heat.shape == (1, 1, 8, 12) and size.shape == offset.shape == (1, 2, 8, 12)


TINY = {"epochs": 1, "batch_size": 4, "view_size": 96, "input_size": 128, "max_steps": 2}


def frames_and_crops(folder: Path, crops: int) -> tuple[Path, list[Path]]:
    """Sixteen labelled frames and ``crops`` face crops to pseudo-label."""
    frames = write_yolo_folder(folder / "frames", 16)
    box = (0.2, 0.2, 0.6, 0.6)
    paths = [
        write_crop_with_a_face(folder / f"crop{i}.png", 64, 64, box).path for i in range(crops)
    ]
    return frames, paths


def test_a_run_continues_from_earlier_weights_and_reports_its_pseudo_labels(
    tmp_path: Path,
) -> None:
    frames, crops = frames_and_crops(tmp_path, 5)
    first = tmp_path / "first.pt"
    train_detector(DetectorTrainConfig(**TINY), frames, first)
    progress = []
    second = tmp_path / "second.pt"
    config = DetectorTrainConfig(**TINY, init_weights=str(first), pseudo_label_min_score=0.01)
    train_detector(config, frames, second, crops, on_label=lambda *a: progress.append(a))
    assert progress == [(i, 5) for i in range(1, 6)]  # every crop looked at, in order
    _model, metadata = load_weights(second)
    assert metadata["continued_from"] == load_weights(first)[1]
    assert metadata["config"]["init_weights"] == str(first) and metadata["pasted_crops"] <= 5


def test_pseudo_labels_can_come_from_another_detector_than_the_initial_weights(
    tmp_path: Path,
) -> None:
    frames, crops = frames_and_crops(tmp_path, 3)
    labeller = tmp_path / "labeller.pt"
    train_detector(DetectorTrainConfig(**TINY), frames, labeller, pretrained=False)
    progress = []
    config = DetectorTrainConfig(
        **TINY, pseudo_labels_from=str(labeller), pseudo_label_min_score=0.01
    )
    out = tmp_path / "fresh.pt"
    train_detector(
        config, frames, out, crops, pretrained=False, on_label=lambda *a: progress.append(a)
    )
    assert progress == [(i, 3) for i in range(1, 4)]  # the crops were labelled by it
    _model, metadata = load_weights(out)
    assert metadata["continued_from"] is None  # while the weights started afresh
    assert metadata["config"]["pseudo_labels_from"] == str(labeller)


class Interrupted(Exception):
    pass


def interrupted_at(epoch: int):
    def on_epoch(report) -> None:
        if report.epoch == epoch:
            raise Interrupted  # as a kill during that epoch: its state is never written

    return on_epoch


RESUMABLE = {
    "epochs": 3,
    "batch_size": 4,
    "view_size": 96,
    "input_size": 128,
    "warmup_steps": 1,
    "val_fraction": 0.25,
    "min_score": 0.05,
    "paste_probability": 0.5,
    "close_up_probability": 0.3,
}


def numbers(reports) -> list[tuple]:
    return [(r.epoch, r.loss, r.heatmap_loss, r.size_loss, r.recall, r.precision) for r in reports]


def state_snapshot(out: Path, epoch: int, into: dict):
    """An on_epoch that copies the run's state file as it stands when ``epoch`` is reported
    (the state after the epoch before)."""

    def on_epoch(report) -> None:
        if report.epoch == epoch:
            into["state"] = torch.load(resume_state_path(out), weights_only=True)

    return on_epoch


def assert_same_tensors(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_tensors(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tensors(x, y)
    else:
        assert a == b


def test_an_interrupted_run_resumes_and_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    frames = write_yolo_folder(tmp_path / "frames", 24)
    crops = [
        write_crop_with_a_face(tmp_path / f"crop{i}.png", 64, 64, (0.2, 0.25, 0.5, 0.5)).path
        for i in range(4)
    ]
    config = DetectorTrainConfig(**RESUMABLE)
    straight_out, straight_state = tmp_path / "straight.pt", {}
    straight = train_detector(
        config,
        frames,
        straight_out,
        crops,
        on_epoch=state_snapshot(straight_out, 3, straight_state),
        pretrained=False,
    )
    notices = []
    again = train_detector(
        config, frames, straight_out, crops, on_notice=notices.append, pretrained=False
    )
    assert numbers(again) == numbers(straight)  # the finished run is not trained twice
    assert "finished before with this recipe and data" in notices[0]
    finished = torch.load(resume_state_path(straight_out), weights_only=True)
    assert finished["finished"] and "model" not in finished  # a small record, no weights

    out, resumed_state = tmp_path / "resumed.pt", {}
    with pytest.raises(Interrupted):
        train_detector(config, frames, out, crops, on_epoch=interrupted_at(2), pretrained=False)
    assert resume_state_path(out).is_file()
    notices, seen = [], []

    def on_epoch(report) -> None:
        seen.append(report)
        state_snapshot(out, 3, resumed_state)(report)

    resumed = train_detector(
        config, frames, out, crops, on_epoch=on_epoch, on_notice=notices.append, pretrained=False
    )
    assert notices == ["continuing the interrupted run after epoch 1"]
    assert [r.epoch for r in seen] == [1, 2, 3]  # the earlier epoch reported again first
    assert numbers(resumed) == numbers(straight) and len(straight) == 3
    # after epoch 2 (trained by the continued process): the same weights, optimiser moments,
    # step, generator and best score as the uninterrupted run's
    a, b = straight_state["state"], resumed_state["state"]
    assert a["step"] == b["step"] > 0 and a["numpy_rng"] == b["numpy_rng"]
    for key in ("model", "optimizer", "torch_rng", "best_f1", "best_sha256", "faces"):
        assert_same_tensors(a[key], b[key])
    assert file_sha256(out) == file_sha256(straight_out)


def test_views_drawn_by_workers_are_each_views_own_seeded_draw(tmp_path: Path) -> None:
    frames, crops = frames_and_crops(tmp_path, 3)
    items = read_labelled_frames(frames).items
    faces = [centred_face(path) for path in crops]
    settings = ViewSettings(96, 0.5, 0.3, STRIDE)
    tasks = [[(0, 11), (3, 12), (5, 13)], [(7, 14)], [(2, 15), (2, 16)]]
    with ViewPool(2, items, faces, settings) as pool:
        drawn = list(pool.batches(tasks))
    assert [len(batch) for batch in drawn] == [3, 1, 2]  # in order, whole batches
    for batch, batch_tasks in zip(drawn, tasks, strict=True):
        for (view, targets), (index, seed) in zip(batch, batch_tasks, strict=True):
            here_view, here_targets = seeded_view(items, faces, settings, index, seed)
            assert here_view.dtype == np.uint8  # what crosses the pipe
            assert np.array_equal(view, normalise(here_view).numpy())
            assert all(np.array_equal(targets[k], here_targets[k]) for k in here_targets)
    assert not np.array_equal(drawn[2][0][0], drawn[2][1][0])  # same frame, other seed


def test_a_run_with_workers_trains_the_same_for_any_number_and_continues_with_another(
    tmp_path: Path,
) -> None:
    frames = write_yolo_folder(tmp_path / "frames", 16)
    crops = [
        write_crop_with_a_face(tmp_path / f"crop{i}.png", 64, 64, (0.2, 0.25, 0.5, 0.5)).path
        for i in range(3)
    ]
    recipe = RESUMABLE | {"epochs": 2}
    one, two, serial = (tmp_path / name for name in ("one.pt", "two.pt", "serial.pt"))
    by_one = train_detector(
        DetectorTrainConfig(**recipe, workers=1), frames, one, crops, pretrained=False
    )
    with pytest.raises(Interrupted):
        train_detector(
            DetectorTrainConfig(**recipe, workers=2),
            frames,
            two,
            crops,
            on_epoch=interrupted_at(2),
            pretrained=False,
        )
    notices = []
    by_two = train_detector(
        DetectorTrainConfig(**recipe, workers=3),
        frames,
        two,
        crops,
        on_notice=notices.append,
        pretrained=False,
    )
    assert notices == ["continuing the interrupted run after epoch 1"]
    assert numbers(by_two) == numbers(by_one)
    # the same weights; the files differ only in the recorded worker count
    assert_same_tensors(load_weights(two)[0].state_dict(), load_weights(one)[0].state_dict())
    # views drawn in turn are other views: a seeded run does not continue as one
    notices = []
    by_none = train_detector(DetectorTrainConfig(**recipe), frames, serial, crops, pretrained=False)
    assert numbers(by_none) != numbers(by_one)
    with pytest.raises(Interrupted):
        train_detector(
            DetectorTrainConfig(**recipe, workers=1),
            frames,
            serial.with_name("seeded.pt"),
            crops,
            on_epoch=interrupted_at(2),
            pretrained=False,
        )
    seeded = serial.with_name("seeded.pt")
    train_detector(
        DetectorTrainConfig(**recipe),
        frames,
        seeded,
        crops,
        on_notice=notices.append,
        pretrained=False,
    )
    assert notices == ["the interrupted run had another recipe (workers): starting over"]


def test_a_run_starts_over_when_the_interrupted_one_cannot_be_continued(tmp_path: Path) -> None:
    frames = write_yolo_folder(tmp_path / "frames", 16)
    config = DetectorTrainConfig(**RESUMABLE)
    out = tmp_path / "detector.pt"
    with pytest.raises(Interrupted):
        train_detector(config, frames, out, on_epoch=interrupted_at(2), pretrained=False)
    state = resume_state_path(out)
    fingerprint = data_fingerprint(read_yolo_folder(frames), [], config)

    def why(config=config, fingerprint=fingerprint, out=out) -> str:
        payload, reason = saved_state(state, config, fingerprint, out)
        assert (payload is None) == (not reason.startswith("continuing"))
        return reason

    assert why() == "continuing the interrupted run after epoch 1"
    assert why(config.model_copy(update={"device": "cpu"})).startswith("continuing")
    assert "another recipe (lr, seed)" in why(config.model_copy(update={"lr": 1e-3, "seed": 1}))
    assert "other frames, labels, crops or starting" in why(
        fingerprint=data_fingerprint([], [], config)
    )
    assert "no longer holds" in why(out=tmp_path / "elsewhere.pt")
    weights = out.read_bytes()
    save_weights(FaceCenterNet(), out, {})  # e.g. the shipped file checked out again
    assert "no longer holds" in why()
    out.write_bytes(weights)
    saved = state.read_bytes()
    state.write_bytes(saved[: len(saved) // 2])  # torn
    assert "unreadable" in why()
    state.write_bytes(saved)
    # written before a setting existed (e.g. stride): it ran at the setting's default
    older = torch.load(state, weights_only=True)
    del older["config"]["stride"]
    torch.save(older, state)
    assert why().startswith("continuing")
    assert "another recipe (stride)" in why(config.model_copy(update={"stride": 4}))
    state.write_bytes(saved)

    notices = []
    other = config.model_copy(update={"epochs": 2})
    reports = train_detector(other, frames, out, on_notice=notices.append, pretrained=False)
    assert "another recipe (epochs)" in notices[0] and [r.epoch for r in reports] == [1, 2]
    assert torch.load(state, weights_only=True)["finished"]
    with pytest.raises(Interrupted):
        train_detector(config, frames, out, on_epoch=interrupted_at(2), pretrained=False)
    notices = []
    train_detector(config, frames, out, on_notice=notices.append, pretrained=False, resume=False)
    assert notices == ["starting over (asked to)"]


def test_a_run_refuses_frames_that_leave_nothing_to_train_on(tmp_path: Path) -> None:
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(StageError, match="no pictures in"):
        train_detector(DetectorTrainConfig(), tmp_path / "empty", tmp_path / "out.pt")
    frames = write_yolo_folder(tmp_path / "frames", 2)
    all_held_out = DetectorTrainConfig(val_fraction=0.999999)
    with pytest.raises(StageError, match="no training pictures"):
        train_detector(all_held_out, frames, tmp_path / "out.pt")


def test_a_run_needs_a_labelled_face_to_judge_epochs_by(tmp_path: Path) -> None:
    frames = write_yolo_folder(tmp_path / "frames", 12)
    config = DetectorTrainConfig(val_fraction=0.25, max_steps=1)
    held_out = split_validation(read_yolo_folder(frames), 0.25)[1]
    for item in held_out:
        (frames / "labels" / f"{item.path.stem}.txt").unlink()
    with pytest.raises(StageError, match=r"no labelled face among the .* held out"):
        train_detector(config, frames, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_a_run_refuses_to_overwrite_the_weights_it_starts_from(tmp_path: Path) -> None:
    frames = write_yolo_folder(tmp_path / "frames", 8)
    start = tmp_path / "start.pt"
    save_weights(FaceCenterNet(), start, {})
    before = start.read_bytes()
    for option in ("init_weights", "pseudo_labels_from"):
        config = DetectorTrainConfig(max_steps=1, **{option: str(start)})
        with pytest.raises(StageError, match="and --out are the same file"):
            train_detector(config, frames, tmp_path / "." / "start.pt")
    assert start.read_bytes() == before


def test_the_data_fingerprint_is_of_contents_not_of_how_the_path_was_typed(
    tmp_path: Path, monkeypatch
) -> None:
    frames = write_yolo_folder(tmp_path / "frames", 4)
    config = DetectorTrainConfig()
    absolute = data_fingerprint(read_yolo_folder(frames), [], config)
    monkeypatch.chdir(tmp_path)
    assert data_fingerprint(read_yolo_folder(Path("frames")), [], config) == absolute
    picture = frames / "images" / "000.jpg"
    Image.fromarray(np.full((96, 128, 3), 30, np.uint8)).save(picture)  # same name and labels
    assert data_fingerprint(read_yolo_folder(frames), [], config) != absolute


def test_a_run_stopped_between_its_weights_and_its_state_is_continued(tmp_path: Path) -> None:
    """The best weights are written before the state: a stop in between leaves the weights
    of the epoch after the state's last. They are this run's, so it goes on (that epoch is
    trained again, to the same weights) instead of starting over."""
    frames = write_yolo_folder(tmp_path / "frames", 16)
    config = DetectorTrainConfig(**RESUMABLE)
    out = tmp_path / "detector.pt"
    with pytest.raises(Interrupted):
        train_detector(config, frames, out, on_epoch=interrupted_at(2), pretrained=False)
    state = resume_state_path(out)
    fingerprint = data_fingerprint(read_yolo_folder(frames), [], config)

    def why(metadata: dict) -> str:
        save_weights(FaceCenterNet(), out, metadata)
        return saved_state(state, config, fingerprint, out)[1]

    assert why({"run_data": fingerprint, "epoch": 2}).startswith("continuing")
    assert "no longer holds" in why({"run_data": fingerprint, "epoch": 3})
    assert "no longer holds" in why({"run_data": "another run", "epoch": 2})
    assert "no longer holds" in why({})


def test_a_wider_detector_round_trips_and_continues_only_as_itself(tmp_path: Path) -> None:
    wide = FaceCenterNet(neck_channels=32, head_convs=2)
    path = tmp_path / "wide.pt"
    save_weights(wide, path, {})
    loaded, _ = load_weights(path)
    assert loaded.architecture == {"neck_channels": 32, "head_convs": 2}
    assert loaded.state_dict().keys() == wide.state_dict().keys()
    assert len(loaded.heatmap) == 3 and loaded.smooth[0].out_channels == 32
    frames = write_yolo_folder(tmp_path / "frames", 8)
    mismatched = DetectorTrainConfig(init_weights=str(path), max_steps=1)
    with pytest.raises(StageError, match="--neck-channels 32 and --head-convs 2"):
        train_detector(mismatched, frames, tmp_path / "out.pt")
    hostile = (
        {"layers": 3},
        {"neck_channels": "64"},
        [64],
        {"neck_channels": 4096},
        {"stride": 16},
        {"stride": 4.0},
    )
    for architecture in (*hostile, {"head_convs": True}):
        bad = tmp_path / "bad.pt"
        torch.save({"format": WEIGHTS_FORMAT, "state_dict": {}, "architecture": architecture}, bad)
        with pytest.raises(ValueError, match="detector architecture"):
            load_weights(bad)


def test_a_stride_4_detector_round_trips_and_outputs_twice_the_cells(tmp_path: Path) -> None:
    fine = FaceCenterNet(stride=4)
    path = tmp_path / "fine.pt"
    save_weights(fine, path, {})
    loaded, _ = load_weights(path)
    assert loaded.stride == 4 and loaded.architecture["stride"] == 4
    assert loaded.state_dict().keys() == fine.state_dict().keys()
    heat, size, offset = loaded(torch.zeros(1, 3, 64, 96))
    assert heat.shape == (1, 1, 16, 24) and size.shape == offset.shape == (1, 2, 16, 24)
    shipped, _ = load_weights(PACKAGED_WEIGHTS)  # files that do not say are stride 8
    assert shipped.stride == 8 and "stride" not in shipped.architecture


def test_a_stride_8_detector_grows_to_stride_4_predicting_the_same_boxes() -> None:
    torch.manual_seed(0)
    coarse = FaceCenterNet().eval()
    grown = FaceCenterNet(stride=4)
    grow_to_finer_stride(coarse, grown)
    grown.eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        # the new lateral starts silent: the finer map is the coarser one upsampled
        assert not grown.fine(grown.trunk(x, fine=True)[0]).any()
        _, size8, _ = coarse(x)
        _, size4, _ = grown(x)
    # sizes are in cells: the same boxes need log 2 more at stride 4 (the heads see the
    # upsampled features through their 3 x 3 filters, so only roughly the same values)
    width8 = size8.exp().mul(8).median()
    width4 = size4.exp().mul(4).median()
    assert width4 == pytest.approx(float(width8), rel=0.1)


def test_a_stride_4_run_starts_from_stride_8_weights_but_not_the_other_way(
    tmp_path: Path,
) -> None:
    frames = write_yolo_folder(tmp_path / "frames", 16)
    coarse = tmp_path / "coarse.pt"
    train_detector(DetectorTrainConfig(**TINY), frames, coarse)
    fine = tmp_path / "fine.pt"
    train_detector(DetectorTrainConfig(**TINY, stride=4, init_weights=str(coarse)), frames, fine)
    model, metadata = load_weights(fine)
    assert model.stride == 4 and metadata["continued_from"] == load_weights(coarse)[1]
    back = DetectorTrainConfig(**TINY, init_weights=str(fine))
    with pytest.raises(StageError, match=r"output stride 4.*--stride 4"):
        train_detector(back, frames, tmp_path / "back.pt")


def test_weights_of_another_kind_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a CenterNet face detector"):
        load_weights(path)
    model = FaceCenterNet()
    assert save_weights(model, tmp_path / "ok.pt", {"note": "x"}) == file_sha256(tmp_path / "ok.pt")
    assert load_weights(tmp_path / "ok.pt")[1] == {"note": "x"}


# ------------------------------------------------------------------ the retraining flow


@pytest.mark.slow
def test_detector_command_trains_and_records_an_mlflow_run(tmp_path: Path, prefect_api) -> None:
    """`python -m flows.detector` as `make detector` runs it, in its own process (a flow run
    in this process would leave Prefect's test server behind for later forking tests)."""
    import os
    import subprocess
    import sys

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    frames = write_yolo_folder(tmp_path / "frames", 16)
    out = tmp_path / "weights" / "detector.pt"
    command = [
        sys.executable,
        "-m",
        "flows.detector",
        "--frames",
        str(frames),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--max-steps",
        "2",
        "--device",
        "cpu",
        "--giou-weight",
        "2",
        "--neck-channels",
        "32",
        "--head-convs",
        "2",
        "--frozen-blocks",
        "3",
        "--frame-scale",
        "1",
        "2",
        "--workers",
        "1",  # a spawned process draws the views, under the flow's task
    ]
    env = {**os.environ, **prefect_api, "MLFLOW_TRACKING_URI": uri}
    process = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert process.returncode == 0, process.stdout + process.stderr
    assert "epoch 1: loss" in process.stdout + process.stderr
    _model, metadata = load_weights(out)
    assert metadata["epoch"] == 1 and metadata["config"]["max_steps"] == 2
    assert metadata["config"]["device"] == "cpu"
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("anime-face-id").experiment_id],
        "attributes.run_name = 'detector-train'",
    )
    assert run.data.params["detector.epochs"] == "1"
    assert run.data.params["detector.giou_weight"] == "2.0"
    assert run.data.params["detector.neck_channels"] == "32"
    assert run.data.params["detector.frozen_blocks"] == "3"
    assert run.data.params["detector.workers"] == "1" and metadata["config"]["workers"] == 1
    assert metadata["config"]["frozen_blocks"] == 3
    assert tuple(metadata["config"]["frame_scale"]) == (1.0, 2.0)
    assert run.data.params["detector.frame_scale"] in ("(1.0, 2.0)", "[1.0, 2.0]")
    assert _model.architecture == {"neck_channels": 32, "head_convs": 2}
    assert run.data.tags["resume"] == "no interrupted run to continue"
    assert "no interrupted run to continue" in process.stdout + process.stderr
    assert torch.load(out.parent / "detector.pt.state", weights_only=True)["finished"]
    assert (
        metadata["run_data"]
        == torch.load(out.parent / "detector.pt.state", weights_only=True)["data"]
    )
    assert {"val_recall", "val_precision", "loss", "giou_loss", "best_val_recall"} <= set(
        run.data.metrics
    )
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "detector")]
    assert artifacts == ["detector/detector.pt"]


def test_detector_command_refuses_a_folder_without_pictures(tmp_path: Path, capsys) -> None:
    from flows.detector import main

    with pytest.raises(SystemExit) as stop:
        main(["--frames", str(tmp_path)])
    assert stop.value.code == 2
    assert "has no images/ folder" in capsys.readouterr().err


def test_a_smoke_run_never_replaces_the_shipped_detector(tmp_path: Path, capsys) -> None:
    from flows.detector import DEFAULT_OUT, main, parse_args

    frames = write_yolo_folder(tmp_path / "frames", 2)
    before = file_sha256(PACKAGED_WEIGHTS)
    with pytest.raises(SystemExit) as stop:
        main(["--frames", str(frames), "--max-steps", "1", "--out", str(PACKAGED_WEIGHTS)])
    assert stop.value.code == 2 and "would replace the shipped detector" in capsys.readouterr().err
    assert file_sha256(PACKAGED_WEIGHTS) == before
    assert parse_args(["--frames", str(frames)]).out == DEFAULT_OUT != PACKAGED_WEIGHTS


def test_detector_command_names_the_options_it_refuses(tmp_path: Path, capsys) -> None:
    from flows.detector import main

    frames = write_yolo_folder(tmp_path / "frames", 2)
    with pytest.raises(SystemExit) as stop:
        main(["--frames", str(frames), "--neck-channels", "0", "--lr", "-1"])
    assert stop.value.code == 2
    errors = capsys.readouterr().err
    assert "--neck-channels: Input should be greater than or equal to 8" in errors
    assert "--lr: Input should be greater than 0" in errors
    with pytest.raises(SystemExit):
        main(["--frames", str(frames), "--pseudo-labels-from", str(tmp_path / "none.pt")])
    assert "--pseudo-labels-from" in capsys.readouterr().err


def test_a_view_worker_that_dies_ends_the_run_with_an_error_not_a_wait(tmp_path: Path) -> None:
    import multiprocessing
    import os
    import signal

    frames = write_yolo_folder(tmp_path / "frames", 4)
    items = read_labelled_frames(frames).items
    before = {process.pid for process in multiprocessing.active_children()}
    tasks = [[(i % len(items), i)] for i in range(12)]
    with ViewPool(1, items, [], ViewSettings(64, 0.0, 0.0, STRIDE)) as pool:
        batches = pool.batches(tasks)
        next(batches)
        workers = [p for p in multiprocessing.active_children() if p.pid not in before]
        assert workers
        for worker in workers:
            os.kill(worker.pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
        with pytest.raises(StageError, match="drawing the training views died"):
            list(batches)


def running_in_group(group: int, patience_s: float = 10.0) -> list[str]:
    """The processes of ``group`` still running (not zombies: an exited child whose parent
    died waits for init to reap it), after up to ``patience_s`` for them to end."""
    import subprocess
    import time

    deadline = time.monotonic() + patience_s
    while True:
        listing = subprocess.run(
            ["ps", "-o", "stat=,args=", "-g", str(group)], capture_output=True, text=True
        ).stdout.splitlines()
        running = [line for line in listing if line.strip() and not line.lstrip().startswith("Z")]
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.5)


@pytest.mark.slow
def test_ctrl_c_stops_a_detector_run_with_workers_at_once_and_leaves_it_to_continue(
    tmp_path: Path, prefect_api
) -> None:
    """Ctrl-C in a terminal goes to the whole process group: the training process stops,
    its view workers never see it (no traceback from each), and none is left running."""
    import contextlib
    import os
    import queue
    import signal
    import subprocess
    import sys
    import threading
    import time

    frames = write_yolo_folder(tmp_path / "frames", 16)
    out = tmp_path / "weights" / "detector.pt"
    command = [sys.executable, "-m", "flows.detector", "--frames", str(frames)]
    command += ["--out", str(out), "--epochs", "200", "--device", "cpu", "--workers", "2"]
    command += ["--neck-channels", "32", "--head-convs", "2", "--frozen-blocks", "3"]
    env = {**os.environ, **prefect_api, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    )
    reader.start()
    seen, deadline = [], time.monotonic() + 300
    state_path = out.parent / "detector.pt.state"
    while not state_path.exists():  # an epoch ended (the state is written atomically)
        assert process.poll() is None and time.monotonic() < deadline, "".join(seen)
        with contextlib.suppress(queue.Empty):
            seen.append(lines.get(timeout=1))
    os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=60)  # GRACE_S ends it at the latest; a waiting run would not end
    reader.join(timeout=30)  # the output ends when no worker holds it either
    while not lines.empty():
        seen.append(lines.get())
    output = "".join(seen)
    assert process.returncode == 130, output
    # stopped in order, or (on a loaded machine) by the grace period running out
    assert "stopped by Ctrl-C" in output or "\nstopped\n" in output, output
    assert "SpawnProcess" not in output  # no worker's traceback
    assert running_in_group(process.pid) == []  # no worker outlived the run
    state = torch.load(state_path, weights_only=True)
    assert not state["finished"] and len(state["reports"]) >= 1  # the next run continues


def test_view_workers_end_when_the_training_process_leaves_without_stopping_them(
    tmp_path: Path,
) -> None:
    """A second Ctrl-C or the grace period ends the training process with os._exit: its
    workers, deaf to Ctrl-C, must not outlive it."""
    import subprocess
    import sys

    frames = write_yolo_folder(tmp_path / "frames", 4)
    script = f"""
import multiprocessing, os
from pathlib import Path
from anime_face_id.faces.detector_data import ViewSettings, read_labelled_frames
from anime_face_id.faces.view_pool import ViewPool
items = read_labelled_frames(Path({str(frames)!r})).items
pool = ViewPool(2, items, [], ViewSettings(64, 0.0, 0.0, 8))
next(pool.batches([[(0, 1)], [(1, 2)], [(2, 3)], [(3, 4)]]))
print(*[p.pid for p in multiprocessing.active_children()], flush=True)
os._exit(0)
"""
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its group: the process and its workers
    )
    stdout, stderr = process.communicate(timeout=300)  # ends when no worker holds the pipes
    assert process.returncode == 0, stderr
    assert stdout.split()  # the workers it started
    assert running_in_group(process.pid) == []
