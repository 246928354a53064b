"""Crop throughput on local Dask clusters of 1, 2 and 4 worker processes against the
single-process loop, measured in the same run.

    .venv/bin/python benchmarks/scale.py [--per-character 40] [--workers 1 2 4]

The pictures are ../shared/testdata/raw (3 characters, the default centernet detector),
collected into a temporary project with the folder backend. Each measurement starts from
no crops: the single-process loop is ``crop_all`` (what the crop flow does with
``compute.runner: local``); a Dask run maps the characters over the workers, as the crop
flow's tasks do with ``compute.runner: dask``, on a ``LocalCluster`` on 127.0.0.1 started
beforehand (its start-up is printed apart), twice: the first pass pays for starting each
worker (torch, the detector, its first forward), the second is what a long-lived cluster
gives and is the one compared. Prints pictures per second and the ratio to the
single-process loop, and checks that every run made the same crops.

With 3 characters at most 3 workers have work: the tasks are per character, as in the
pipeline, so more characters than workers is what a cluster needs.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anime_face_id import crop, layout  # noqa: E402
from anime_face_id.collect import collect_all  # noqa: E402
from anime_face_id.config import CropConfig, parse_params  # noqa: E402
from anime_face_id.faces.detectors import process_detector  # noqa: E402

RAW = REPO.parent / "shared" / "testdata" / "raw"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-character", type=int, default=40, help="pictures per character")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--raw", type=Path, default=RAW, help="one sub-folder per character")
    return parser.parse_args(argv)


def make_project(root: Path, raw: Path, per_character: int) -> None:
    names = sorted(entry.name for entry in raw.iterdir() if entry.is_dir())
    params = parse_params(
        {
            "characters": [{"name": name} for name in names],
            "collect": {"backend": "folder", "folder": str(raw), "limit": per_character},
        }
    )
    collect_all(root, params)


def crops_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((root / layout.FACES_DIR).rglob("*.png")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def fresh(root: Path) -> None:
    shutil.rmtree(root / layout.FACES_DIR, ignore_errors=True)


def crop_one(root: str, slug: str, rows: list[dict], config: CropConfig):
    """What a Dask worker runs: the crop flow's per-character task, without Prefect."""
    detector = process_detector(Path(root), config)
    return crop.crop_character(Path(root), slug, rows, config, detector)


def single_process(root: Path, config: CropConfig) -> float:
    fresh(root)
    started = time.perf_counter()
    crop.crop_all(root, config)
    return time.perf_counter() - started


def on_cluster(root: Path, config: CropConfig, workers: int) -> tuple[float, float, float]:
    """(cluster start-up, first pass, second pass) in seconds. The first pass pays for
    each worker's start (torch, the detector, its first forward); the second is what a
    long-lived cluster gives."""
    from distributed import Client, LocalCluster

    started = time.perf_counter()
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    )
    with cluster, Client(cluster) as client:
        ready = time.perf_counter()
        passes = []
        for _ in range(2):
            fresh(root)
            begin = time.perf_counter()
            rows = crop.raw_rows_by_character(root)
            futures = [
                client.submit(crop_one, str(root), slug, slug_rows, config, pure=False)
                for slug, slug_rows in sorted(rows.items())
            ]
            crop.write_crop_outputs(root, client.gather(futures))
            passes.append(time.perf_counter() - begin)
    return ready - started, passes[0], passes[1]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = CropConfig()
    with tempfile.TemporaryDirectory(prefix="scale-") as directory:
        root = Path(directory)
        make_project(root, args.raw, args.per_character)
        by_character = crop.raw_rows_by_character(root)
        pictures = sum(len(rows) for rows in by_character.values())
        print(f"{pictures} pictures of {len(by_character)} characters")
        baseline = single_process(root, config)
        expected = crops_digest(root)
        print(f"single process   {baseline:7.1f} s  {pictures / baseline:6.2f} pictures/s  1.00x")
        for workers in args.workers:
            start_up, first, second = on_cluster(root, config, workers)
            same = "same crops" if crops_digest(root) == expected else "DIFFERENT CROPS"
            print(
                f"dask, {workers} worker(s) {second:7.1f} s  {pictures / second:6.2f} pictures/s  "
                f"{baseline / second:.2f}x  (first pass {first:.1f} s, cluster start "
                f"{start_up:.1f} s; {same})"
            )


if __name__ == "__main__":
    main()
