"""How fast the detector's training views are drawn: in turn by the training process
(`--workers 0`, as the shipped weights were trained) against `--workers N` spawned
processes (anime_face_id/faces/view_pool.py), measured in the same run.

    .venv/bin/python benchmarks/detector_views.py [--frames DIR] [--crops DIR] [--workers 1 2]

A GPU takes a few tens of milliseconds for a training step of 16 views; drawn in turn, each
view costs about 10 ms of one core, so the card would wait for views most of the time. This
prints views per second for each setting and the ratio to drawing them in turn, on frames
and identity crops from ../shared (the detector's training data), at the training recipe's
view size, pasted faces and close-ups. On a 2-core machine the workers share the cores with
nothing else here, but in training they share them with the training step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anime_face_id.faces.detector_data import (  # noqa: E402
    ViewSettings,
    centred_face,
    read_labelled_frames,
    training_sample,
)
from anime_face_id.faces.view_pool import SEED_BOUND, ViewPool  # noqa: E402

SHARED = REPO.parent / "shared" / "testdata"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=Path, default=SHARED / "detection-train")
    parser.add_argument("--crops", type=Path, default=SHARED / "identities")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, default=24, help="timed batches per setting")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--view-size", type=int, default=320)
    parser.add_argument("--close-ups", type=float, default=0.2)
    return parser.parse_args(argv)


def serial_rate(items, faces, settings: ViewSettings, views: int) -> float:
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(views):
        training_sample(items[int(rng.integers(len(items)))], faces, rng, settings)
    return views / (time.perf_counter() - started)


def pool_rate(pool: ViewPool, items, batches: int, batch_size: int) -> float:
    rng = np.random.default_rng(0)
    tasks = [
        [(int(rng.integers(len(items))), int(rng.integers(SEED_BOUND))) for _ in range(batch_size)]
        for _ in range(batches)
    ]
    started = time.perf_counter()
    drawn = sum(len(batch) for batch in pool.batches(tasks))
    return drawn / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not (args.frames / "images").is_dir():
        raise SystemExit(f"error: {args.frames} has no images/ folder")
    items = read_labelled_frames(args.frames).items
    crops = sorted(p for p in args.crops.glob("*/*") if p.is_file()) if args.crops.is_dir() else []
    faces = [centred_face(path) for path in crops]
    settings = ViewSettings(args.view_size, 0.4, args.close_ups if faces else 0.0, 8)
    views = args.batches * args.batch_size
    print(
        f"{len(items)} frames, {len(faces)} crops, {views} views of {args.view_size} px a round, "
        f"{args.rounds} rounds"
    )
    serial_rate(items, faces, settings, args.batch_size)  # decoders and caches warm
    rates: dict[str, list[float]] = {"in turn (--workers 0)": []}
    pools = {}
    try:
        for workers in args.workers:
            pools[workers] = ViewPool(workers, items, faces, settings)
            pool_rate(pools[workers], items, 2 * workers, args.batch_size)  # spawned, warm
            rates[f"--workers {workers}"] = []
        for _ in range(args.rounds):  # interleaved, so drift falls on every setting alike
            rates["in turn (--workers 0)"].append(serial_rate(items, faces, settings, views))
            for workers, pool in pools.items():
                rate = pool_rate(pool, items, args.batches, args.batch_size)
                rates[f"--workers {workers}"].append(rate)
    finally:
        for pool in pools.values():
            pool.close()
    baseline = statistics.median(rates["in turn (--workers 0)"])
    print(f"{'setting':<24}{'views/s (median)':>18}{'min-max':>18}{'x in turn':>11}")
    for name, values in rates.items():
        median = statistics.median(values)
        spread = f"{min(values):.0f}-{max(values):.0f}"
        print(f"{name:<24}{median:>18.1f}{spread:>18}{median / baseline:>11.2f}")


if __name__ == "__main__":
    main()
