"""Recognition quality of the whole recipe on a folder of face crops, against ImageNet features.

    python benchmarks/quality.py [FOLDER] [--epochs N] [--batches-per-epoch N] [--holdout 4]
                                 [--workdir DIR] [--check] ...

FOLDER holds one sub-directory of face crops per character (default
../shared/testdata/identities: 16 characters, 1,359 crops). A temporary project is built
from it (folder backend, detector none, pending review accepted, ``--holdout`` whole
characters kept out for open-set evaluation); the data stages, train and evaluate run
through the core library exactly as the pipeline runs them; then the trained model's
numbers are printed next to the untrained backbone's pooled ImageNet features, with the
ratio and the targets (val precision@1 >= 0.95, MAP@R >= 0.80, open-set precision@1 >= 0.85).
``--check`` exits with status 1 when a target is missed.

On a 2-core CPU an epoch at 160 px takes minutes; ``--epochs 1 --batches-per-epoch 5``
is a smoke test of the machinery, not a measurement.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing

from anime_face_id.balance import balance_train  # noqa: E402
from anime_face_id.collect import collect_all  # noqa: E402
from anime_face_id.config import Params, parse_params  # noqa: E402
from anime_face_id.crop import crop_all  # noqa: E402
from anime_face_id.evaluate import evaluate  # noqa: E402
from anime_face_id.fileio import atomic_write_json  # noqa: E402
from anime_face_id.review import apply_review  # noqa: E402
from anime_face_id.split import split_dataset  # noqa: E402
from anime_face_id.train import format_duration, train  # noqa: E402

DEFAULT_FOLDER = REPO.parent / "shared" / "testdata" / "identities"

# (report section, metric path, label, target or None)
ROWS = (
    ("val", ("precision_at_1",), "val precision@1", 0.95),
    ("val", ("map_at_r",), "val MAP@R", 0.80),
    ("val", ("r_precision",), "val R-precision", None),
    ("val", ("precision_at_5",), "val precision@5", None),
    ("val", ("top_k_accuracy", "5"), "val top-5 accuracy", None),
    ("val", ("identification", "precision_at_1"), "val identification P@1", None),
    ("val", ("eer",), "val verification EER (lower is better)", None),
    ("test", ("precision_at_1",), "test precision@1", None),
    ("test", ("map_at_r",), "test MAP@R", None),
    ("open_set", ("precision_at_1",), "open-set precision@1", 0.85),
    ("open_set", ("map_at_r",), "open-set MAP@R", None),
)
BASELINE_OF = {"val": "baseline_val", "open_set": "baseline_open_set"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batches-per-epoch", type=int, default=None)
    parser.add_argument("--holdout", type=int, default=4, help="characters held out (open set)")
    parser.add_argument("--image-size", type=int, default=160, help="network input (px)")
    parser.add_argument("--crop-size", type=int, default=160, help="stored crop side (px)")
    parser.add_argument("--p", type=int, default=8, help="characters per batch")
    parser.add_argument("--k", type=int, default=4, help="images per character per batch")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--min-per-class", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes")
    parser.add_argument("--workdir", type=Path, help="keep the project here (default: temporary)")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return parser.parse_args()


def character_folders(folder: Path) -> list[str]:
    names = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if len(names) < 2:
        raise SystemExit(f"{folder}: need at least 2 character sub-directories, found {len(names)}")
    return names


def build_params(args: argparse.Namespace, names: list[str]) -> Params:
    return parse_params(
        {
            "characters": [{"name": name} for name in names],
            "collect": {"backend": "folder", "folder": str(args.folder.resolve()), "limit": 100000},
            "crop": {"detector": "none", "size": args.crop_size},
            "review": {"require_complete": False},
            "split": {"holdout_characters": args.holdout, "seed": args.seed},
            "balance": {"min_per_class": args.min_per_class, "seed": args.seed},
            "train": {
                "image_size": args.image_size,
                "embedding_dim": args.embedding_dim,
                "p": args.p,
                "k": args.k,
                "lr": args.lr,
                "epochs": args.epochs,
                "batches_per_epoch": args.batches_per_epoch,
                "augment": not args.no_augment,
                "seed": args.seed,
                "device": args.device,
                "workers": args.workers,
            },
            "evaluate": {"baseline": True, "device": args.device, "seed": args.seed},
        },
        "benchmark params",
    )


def run_stages(root: Path, params: Params) -> dict:
    timings = {}

    def timed(name, action):
        started = time.perf_counter()
        result = action()
        timings[name] = time.perf_counter() - started
        print(f"[{name}] done in {format_duration(timings[name])}", flush=True)
        return result

    timed("collect", lambda: collect_all(root, params))
    timed("crop", lambda: crop_all(root, params.crop))
    timed("review", lambda: apply_review(root, params))
    split = timed("split", lambda: split_dataset(root, params.split))
    for warning in split.warnings:
        print(f"  split warning: {warning}")
    timed("balance", lambda: balance_train(root, params.balance))
    timed("train", lambda: train(root, params.train))
    report = timed("evaluate", lambda: evaluate(root, params.evaluate))
    report["timings_s"] = timings
    return report


def lookup(report: dict, section: str, keys: tuple[str, ...]) -> float | None:
    value = report.get(section)
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, int | float) else None


def comparison(report: dict) -> list[dict]:
    rows = []
    for section, keys, label, target in ROWS:
        model = lookup(report, section, keys)
        if model is None and section not in report:
            continue
        baseline_section = BASELINE_OF.get(section)
        baseline = lookup(report, baseline_section, keys) if baseline_section else None
        ratio = model / baseline if model is not None and baseline else None
        passed = None if target is None or model is None else model >= target
        rows.append(
            {
                "metric": label,
                "model": model,
                "baseline": baseline,
                "ratio": ratio,
                "target": target,
                "passed": passed,
            }
        )
    return rows


def _cell(value: float | None, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def print_table(rows: list[dict]) -> None:
    header = f"{'metric':42} {'model':>7} {'ImageNet':>9} {'ratio':>7} {'target':>7}  status"
    print(header)
    print("-" * len(header))
    for row in rows:
        status = {True: "ok", False: "MISSED", None: ""}[row["passed"]]
        print(
            f"{row['metric']:42} {_cell(row['model']):>7} {_cell(row['baseline']):>9} "
            f"{_cell(row['ratio'], '{:.2f}x'):>7} {_cell(row['target'], '>={:.2f}'):>7}  {status}"
        )


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = args.folder.resolve()
    names = character_folders(folder)
    params = build_params(args, names)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="anime-face-id-quality-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{len(names)} characters from {folder}; project in {root}", flush=True)
    try:
        report = run_stages(root, params)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    rows = comparison(report)
    print()
    print(
        f"{report['val']['num_characters']} val characters ({report['val']['num_images']} images), "
        f"{report.get('open_set', {}).get('num_characters', 0)} held out; "
        f"train {params.train.epochs} epoch(s), best epoch {report['checkpoint']['best_epoch']}"
    )
    print_table(rows)
    if args.json:
        atomic_write_json(args.json, {"rows": rows, "report": report})
    missed = [row["metric"] for row in rows if row["passed"] is False]
    if args.check and missed:
        print(f"\ntargets missed: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
