"""Per-face naming time against an exact gallery: the vectorised path against ranking
every gallery item (what `identify` did before, kept as the exhaustive neighbour path).

    .venv/bin/python benchmarks/naming.py [--items 10000 100000] [--faces 20]

Random unit embeddings (128-d, 1,000 characters) stand in for a gallery; both paths give the
same names (tests/test_gallery.py checks it), so only time is measured. Prints ms per face
for both and the speed-up, baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np

from anime_face_id.calibration import Calibration
from anime_face_id.gallery import Gallery
from anime_face_id.naming import name_exactly, name_from_neighbours
from anime_face_id.search_index import unit_rows


def gallery_for(items: int, characters: int, dim: int, seed: int) -> Gallery:
    rng = np.random.default_rng(seed)
    return Gallery(
        unit_rows(rng.normal(size=(items, dim))),
        rng.integers(0, characters, items),
        [f"character {i}" for i in range(characters)],
        [f"data/faces/{i}.png" for i in range(items)],
        "benchmark",
        Calibration(0.5, "configured", 0, 0, None, None),
    )


def ms_per_face(name, gallery: Gallery, queries: np.ndarray, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for query in queries:  # identify names the faces of one picture at a time
            name(gallery, query[None], 5, 5)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--faces", type=int, default=20)
    parser.add_argument("--characters", type=int, default=1000)
    args = parser.parse_args()
    for items in args.items:
        gallery = gallery_for(items, args.characters, 128, seed=0)
        queries = np.random.default_rng(1).normal(size=(args.faces, 128)).astype(np.float32)
        every_item = functools.partial(name_from_neighbours, depth=items)
        baseline = ms_per_face(every_item, gallery, queries)
        vectorised = ms_per_face(name_exactly, gallery, queries)
        print(
            f"{items:>7} gallery items: every item ranked {baseline:7.2f} ms/face, "
            f"vectorised {vectorised:6.2f} ms/face ({baseline / vectorised:.1f}x faster)"
        )


if __name__ == "__main__":
    main()
