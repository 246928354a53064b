"""Detection quality and crop throughput on the shared test pictures.

    python benchmarks/detection.py [--shared ../shared] [--workers 0]

Prints the cascade's recall on the labelled cartoon frames (IoU 0.5 and 0.3; the labels
are incomplete, so precision is not measured), the share of the illustrations with at least
one face, and images per second for one thread against ``--workers`` threads.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from anime_face_id.faces.boxes import from_yolo, matched
from anime_face_id.faces.detectors import LbpCascadeDetector
from anime_face_id.imaging import load_rgb_array

REPO = Path(__file__).resolve().parents[1]


def recall(detector: LbpCascadeDetector, folder: Path) -> dict[float, tuple[int, int]]:
    hits = {0.5: 0, 0.3: 0}
    total = 0
    for image in sorted((folder / "images").glob("*.jpg")):
        rgb = load_rgb_array(image)
        height, width = rgb.shape[:2]
        truths = [
            from_yolo(*map(float, line.split()[1:5]), width, height)
            for line in (folder / "labels" / f"{image.stem}.txt").read_text().splitlines()
            if line.strip()
        ]
        found = [d.box for d in detector.detect(rgb)]
        total += len(truths)
        for threshold in hits:
            hits[threshold] += matched(truths, found, threshold)
    return {threshold: (hit, total) for threshold, hit in hits.items()}


def images_per_second(detector: LbpCascadeDetector, images: list[Path], workers: int) -> float:
    arrays = [load_rgb_array(image) for image in images]
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        found = list(pool.map(detector.detect, arrays))
    elapsed = time.perf_counter() - start
    print(
        f"  {workers} thread(s): {len(arrays) / elapsed:.1f} images/s, "
        f"{sum(1 for f in found if f)}/{len(arrays)} with a face"
    )
    return len(arrays) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--workers", type=int, default=0, help="0 = one per CPU core")
    args = parser.parse_args()
    detector = LbpCascadeDetector(args.shared / "detector" / "lbpcascade_animeface.xml")
    for threshold, (hit, total) in recall(detector, args.shared / "testdata" / "detection").items():
        print(f"recall@IoU{threshold}: {hit}/{total} = {hit / total:.3f}")
    images = sorted((args.shared / "testdata" / "raw").glob("*/*.jpg"))
    workers = args.workers or os.cpu_count() or 1
    print(f"throughput on {len(images)} illustrations:")
    single = images_per_second(detector, images, 1)
    parallel = images_per_second(detector, images, workers)
    print(f"speed-up with {workers} threads: {parallel / single:.2f}x")


if __name__ == "__main__":
    main()
