"""Face detection: the project's CenterNet against nagadomi's cascade, side by side.

    .venv/bin/python benchmarks/detection.py [--shared ../shared] [--weights FILE]
        [--input-size 512] [--min-score 0.3] [--sheet detections.jpg]

Prints, for each detector:

- recall and precision at IoU 0.5 on the validation frames of
  ``testdata/detection-train`` (the share the detector's training held out, chosen by file
  name: the same pictures whatever the weights);
- the same recall by band of labelled face width (faces), to see which faces are missed;
- recall at IoU 0.5 and 0.3 on the 30 frames of ``testdata/detection`` (their labels are
  incomplete, so no precision);
- the share of the illustrations in ``testdata/raw`` with at least one face (no box labels;
  ``--sheet`` draws every detection on them, to look at);
- close-ups: every labelled face of at least 40 px in the validation frames, cut as a square
  portrait around it (the box widened by 0.5 on each side, so the face fills about half the
  picture, as in the portraits users scrape) and scaled to 256 px: recall at IoU 0.5 and the
  share with any face found;
- images per second on this machine's CPU, at the frames' 640 px, against the cascade as
  the baseline measured in the same run;
- the project's detector by ``min_score`` on the validation frames (recall, precision, F1
  and the best F1), and its fit: the same figures on as many of the split's training
  frames. Close to the held-out figures and both short of the target, the detector
  underfits (more training would help); far above them, it overfits.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from anime_face_id.faces.boxes import (
    crop_square,
    recall_by_width,
    recall_precision,
    square_crop_box,
)
from anime_face_id.faces.detector_data import IMAGE_SUFFIXES, read_yolo_folder, split_validation
from anime_face_id.faces.detectors import PACKAGED_WEIGHTS, CenterNetDetector, LbpCascadeDetector
from anime_face_id.imaging import load_rgb_array

REPO = Path(__file__).resolve().parents[1]
VALIDATION_FRACTION = 0.1  # DetectorTrainConfig.val_fraction's default
# Bands of labelled face width (px, in the frame as stored) for the recall breakdown.
WIDTH_EDGES = (30, 45, 60, 90, 150)
SWEEP = (0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6)  # min_score values the sweep prints


def pictures_and_boxes(items) -> list[tuple[np.ndarray, list]]:
    return [(load_rgb_array(item.path), [tuple(b) for b in item.boxes.tolist()]) for item in items]


def evenly_spaced(items: list, count: int) -> list:
    """``count`` of ``items`` (fewer if there are fewer), spread over the whole list: the
    training frames whose fit is set beside the held-out figures."""
    step = max(1, len(items) // max(count, 1))
    return items[::step][:count]


def f1(recall: float, precision: float) -> float:
    return 2 * recall * precision / (recall + precision) if recall + precision else 0.0


def detector_recall_precision(detector, pictures, threshold: float) -> tuple[float, float]:
    return recall_precision(truths_and_found(detector, pictures), threshold)


def truths_and_found(detector, pictures) -> list[tuple[list, list]]:
    return [(boxes, [d.box for d in detector.detect(rgb)]) for rgb, boxes in pictures]


def width_bands(edges=WIDTH_EDGES) -> list[str]:
    bounds = [0, *edges]
    return [f"{low}-{high}" for low, high in zip(bounds, edges, strict=False)] + [f"{edges[-1]}+"]


def by_width_line(pairs) -> str:
    """Where the misses are: recall at IoU 0.5 per band of labelled face width."""
    counts = recall_by_width(pairs, WIDTH_EDGES, 0.5)
    return " | ".join(
        f"{band} px {hits / total if total else 0:.2f} ({total})"
        for band, (hits, total) in zip(width_bands(), counts, strict=True)
    )


def score_sweep(weights: Path, input_size: int, pictures, thresholds) -> list[tuple]:
    """Recall and precision at IoU 0.5 for each ``min_score`` (one detection pass at the
    lowest, then filtered): where the operating point could sit."""
    detector = CenterNetDetector(weights, input_size, min(thresholds))
    found = [(boxes, detector.detect(rgb)) for rgb, boxes in pictures]
    rows = []
    for threshold in thresholds:
        kept = [(boxes, [d.box for d in dets if d.score >= threshold]) for boxes, dets in found]
        rows.append((threshold, *recall_precision(kept, 0.5)))
    return rows


def close_ups(pictures, margin: float = 0.5, min_side: float = 40, size: int = 256) -> list:
    """Held-out portraits: (square crop around one labelled face, [its box in the crop])."""
    shots = []
    for rgb, boxes in pictures:
        height, width = rgb.shape[:2]
        for box in boxes:
            if min(box[2], box[3]) < min_side:
                continue
            x, y, side = square_crop_box(box, width, height, margin)
            scale = size / side
            moved = ((box[0] - x) * scale, (box[1] - y) * scale, box[2] * scale, box[3] * scale)
            shots.append((crop_square(rgb, x, y, side, size), [moved]))
    return shots


def share_with_a_face(detector, pictures: list[np.ndarray]) -> tuple[int, list[list]]:
    found = [detector.detect(rgb) for rgb in pictures]
    return sum(1 for f in found if f), found


def frames_of_640(frames: list, count: int = 40) -> list[np.ndarray]:
    """Speed is measured on frames whose longest side is 640 px: those of that size, else
    (other data) the first frames scaled to it."""
    import cv2

    exact = [rgb for rgb, _ in frames if max(rgb.shape[:2]) == 640][:count]
    if exact:
        return exact
    scaled = []
    for rgb, _ in frames[:count]:
        scale = 640 / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        scaled.append(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
    return scaled


def images_per_second(detector, pictures: list[np.ndarray], seconds: float = 10.0) -> float:
    detector.detect(pictures[0])  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        detector.detect(pictures[done % len(pictures)])
        done += 1
    return done / (time.perf_counter() - start)


def contact_sheet(pictures, detections, path: Path, tile: int = 192) -> None:
    import cv2

    columns = 10
    rows = -(-len(pictures) // columns)
    sheet = np.full((rows * tile, columns * tile, 3), 255, np.uint8)
    for index, (rgb, found) in enumerate(zip(pictures, detections, strict=True)):
        scale = tile / max(rgb.shape[:2])
        small = cv2.resize(
            rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        )
        for d in found:
            x, y, w, h = (round(v * scale) for v in d.box)
            cv2.rectangle(small, (x, y), (x + w, y + h), (255, 0, 0), 2)
        top, left = (index // columns) * tile, (index % columns) * tile
        sheet[top : top + small.shape[0], left : left + small.shape[1]] = small
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--weights", type=Path, default=PACKAGED_WEIGHTS)
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--min-score", type=float, default=0.3)
    parser.add_argument("--sheet", type=Path, default=None, help="draw the illustrations' faces")
    parser.add_argument("--seconds", type=float, default=10.0, help="per speed measurement")
    args = parser.parse_args()
    testdata = args.shared / "testdata"
    detectors = {
        "cascade (lbp)": LbpCascadeDetector(args.shared / "detector" / "lbpcascade_animeface.xml"),
        "centernet": CenterNetDetector(args.weights, args.input_size, args.min_score),
    }
    # one read of the frames (it decodes each one) for both sides of the training split
    training_items, validation_items = split_validation(
        read_yolo_folder(testdata / "detection-train"), VALIDATION_FRACTION
    )
    validation = pictures_and_boxes(validation_items)
    small_set = pictures_and_boxes(read_yolo_folder(testdata / "detection"))
    illustrations = [
        load_rgb_array(p)
        for p in sorted((testdata / "raw").glob("*/*"))
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    frames_640 = frames_of_640(validation)
    portraits = close_ups(validation)
    print(
        f"torch threads {torch.get_num_threads()}; {len(validation)} validation frames, "
        f"{len(small_set)} small-set frames, {len(illustrations)} illustrations, "
        f"{len(portraits)} close-ups, speed on {len(frames_640)} frames of 640 px"
    )
    speeds = {}
    for name, detector in detectors.items():
        validation_found = truths_and_found(detector, validation)
        recall, precision = recall_precision(validation_found, 0.5)
        small_05, _ = detector_recall_precision(detector, small_set, 0.5)
        small_03, _ = detector_recall_precision(detector, small_set, 0.3)
        with_face, found = share_with_a_face(detector, illustrations)
        close_recall, _ = detector_recall_precision(detector, portraits, 0.5)
        close_found, _ = share_with_a_face(detector, [rgb for rgb, _ in portraits])
        speeds[name] = images_per_second(detector, frames_640, args.seconds) if frames_640 else 0.0
        print(
            f"{name:14s} frames recall {recall:.3f} precision {precision:.3f} (IoU 0.5) | "
            f"small set recall {small_05:.3f} (IoU 0.5) {small_03:.3f} (IoU 0.3) | "
            f"illustrations with a face {with_face}/{len(illustrations)} "
            f"= {with_face / max(len(illustrations), 1):.3f}, "
            f"{sum(map(len, found)) / max(len(illustrations), 1):.2f} boxes each | "
            f"close-ups recall {close_recall:.3f} (IoU 0.5), with a face "
            f"{close_found / max(len(portraits), 1):.3f} | "
            f"{speeds[name]:.1f} images/s"
        )
        print(f"  frames recall by labelled face width: {by_width_line(validation_found)}")
        if args.sheet is not None and name == "centernet":
            contact_sheet(illustrations, found, args.sheet)
            print(f"  drawn: {args.sheet}")
    seen = pictures_and_boxes(evenly_spaced(training_items, len(validation)))
    for label, pictures in (("validation", validation), ("training (fit)", seen)):
        print(f"centernet on {len(pictures)} {label} frames by min_score (IoU 0.5):")
        rows = score_sweep(args.weights, args.input_size, pictures, SWEEP)
        for threshold, recall, precision in rows:
            print(
                f"  min_score {threshold:.2f}: recall {recall:.3f} precision {precision:.3f} "
                f"F1 {f1(recall, precision):.3f}"
            )
        best = max(rows, key=lambda row: f1(*row[1:]))
        print(f"  best F1 {f1(*best[1:]):.3f} at min_score {best[0]:.2f}")
    baseline = speeds["cascade (lbp)"]
    if baseline:
        print(f"speed of centernet against the cascade: {speeds['centernet'] / baseline:.2f}x")


if __name__ == "__main__":
    main()
