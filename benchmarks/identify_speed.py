"""How fast `anime-face-id identify` answers: start-up, and pictures per second one at a
time against in batches, measured in the same run.

    .venv/bin/python benchmarks/identify_speed.py [--pictures 16] [--starts 3]

A generated project at the default recipe (the packaged CenterNet detector at 512 px, a
160 px EfficientNet-Lite0 embedder with flip test, 128-d; untrained weights, which cost the
same time as trained ones) and a gallery of 4 characters. The pictures are
``../shared/testdata/raw`` illustrations (single-character, 1 face or more each).

Prints:
- start-up: wall seconds of the whole command for one picture, a fresh process each time
  (median of ``--starts``), and the same for ``--help`` (Python and the CLI alone);
- throughput: pictures per second through ``Identifier.identify_file`` one picture at a
  time (the baseline: what identify did before it batched) and ``identify_files`` with the
  CLI's batch of 16, on the same pictures in the same process.
- the detector alone, pictures per second through the packaged CenterNet's network when
  the pictures (resized to one input shape, so that they can share a pass) go through it
  one at a time and in batches of 2, 4 and 16: why identify detects one picture per pass
  and batches only the faces' embeddings (on this 2-core CPU batches were slower, 0.35x
  at 16; an accelerator would differ).
Target (issue 12): identify starts in under 2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anime_face_id.checkpoint import save_checkpoint  # noqa: E402
from anime_face_id.config import Params, parse_params  # noqa: E402
from anime_face_id.gallery import GALLERY, rebuild_gallery  # noqa: E402
from anime_face_id.identify import PICTURES_PER_PASS, load_identifier  # noqa: E402
from anime_face_id.model.embedder import build_embedder  # noqa: E402
from tests.test_train import make_synthetic_project  # noqa: E402

NAMES = ("Akane Red", "Ao Blue", "Midori Green", "Kiiro Yellow")
CLI = REPO / ".venv" / "bin" / "anime-face-id"


def make_project(root: Path) -> Params:
    """The repository's params.yaml with the generated characters: its recipe, its detector."""
    make_synthetic_project(root, names=NAMES, counts=(8, 3, 3), seed=0)
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["characters"] = [{"name": name} for name in NAMES]
    (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    params = parse_params(data)
    torch.manual_seed(0)
    model = build_embedder(params.train)
    save_checkpoint(root / "models/embedder.pt", model, params.train, sorted(NAMES), 1, {})
    rebuild_gallery(root, params, root / "models/embedder.pt", root / GALLERY)
    return params


def pictures(count: int) -> list[Path]:
    raw = REPO.parent / "shared" / "testdata" / "raw"
    found = sorted(p for p in raw.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not found:
        raise SystemExit(f"no pictures under {raw}")
    return found[:count]


def wall(command: list[str], cwd: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, cwd=cwd, check=True, capture_output=True, env=os.environ.copy())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def detector_passes(paths: list[Path], batch_sizes: tuple[int, ...], repeats: int) -> dict:
    """Pictures per second through the packaged detector's network (decoding left out),
    ``paths`` resized to one square input, for each batch size; best of ``repeats``."""
    import cv2

    from anime_face_id.faces.centernet import prepare_input
    from anime_face_id.faces.detectors import CenterNetDetector
    from anime_face_id.imaging import load_rgb_array

    detector = CenterNetDetector()
    size = detector.input_size
    inputs = torch.cat(
        [prepare_input(cv2.resize(load_rgb_array(p), (size, size)), size)[0] for p in paths]
    )
    network = detector._model
    network(inputs[:1])  # warm
    speeds = {}
    for batch in batch_sizes:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for first in range(0, len(inputs), batch):
                network(inputs[first : first + batch])
            best = min(best, time.perf_counter() - start)
        speeds[batch] = len(inputs) / best
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=int, default=16)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="throughput: the best of these")
    args = parser.parse_args()
    chosen = pictures(args.pictures)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "project"
        params = make_project(root)
        help_s = wall([str(CLI), "--help"], root, args.starts)
        start_s = wall([str(CLI), "identify", str(chosen[0])], root, args.starts)
        print(f"start-up: identify one picture {start_s:.2f} s (the CLI alone: {help_s:.2f} s)")

        identifier = load_identifier(root, params)
        identifier.identify_file(chosen[0])  # warm: the first forward passes set up kernels
        one_at_a_time, in_batches = [], []
        for _ in range(args.repeats):  # alternated, so that neither gets the warmer machine
            start = time.perf_counter()
            single = [identifier.identify_file(path) for path in chosen]
            one_at_a_time.append(len(chosen) / (time.perf_counter() - start))
            start = time.perf_counter()
            batched = identifier.identify_files(chosen)  # PICTURES_PER_PASS at a time
            in_batches.append(len(chosen) / (time.perf_counter() - start))
        one_at_a_time, in_batches = max(one_at_a_time), max(in_batches)
        faces = sum(len(result.faces) for result in batched)
        same = [r.to_json() for r in single] == [r.to_json() for r in batched]
        print(
            f"throughput ({len(chosen)} pictures, {faces} faces): one at a time "
            f"{one_at_a_time:.1f} pictures/s, in batches of {PICTURES_PER_PASS} "
            f"{in_batches:.1f} pictures/s ({in_batches / one_at_a_time:.2f}x); "
            f"same answers: {same}"
        )
    sizes = tuple(size for size in (1, 2, 4, 16) if size <= len(chosen))
    speeds = detector_passes(chosen, sizes, args.repeats)
    print(
        f"detector network, {len(chosen)} pictures of {params.crop.input_size} px: "
        + ", ".join(
            f"batches of {size} {speed:.1f} pictures/s ({speed / speeds[1]:.2f}x)"
            for size, speed in speeds.items()
        )
    )


if __name__ == "__main__":
    main()
