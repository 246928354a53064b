"""Recognition quality of the recipe in params.yaml on a folder of face crops, against
ImageNet features.

    python benchmarks/quality.py [FOLDER] [-S train.epochs=16 ...] [--seeds 0 1 2]
                                 [--holdout 4] [--params params.yaml] [--workdir DIR]
                                 [--json FILE] [--check]

FOLDER holds one sub-directory of face crops per character (default
../shared/testdata/identities: 16 characters, 1,359 crops). The recipe is the split,
balance, train and evaluate sections of ``--params`` (default: this repository's
params.yaml, i.e. the defaults a user gets), changed only by ``-S section.key=value``
(as in ``dvc exp run -S``; the value is read as YAML). A temporary project is built from
the folder (folder backend, detector none, pending review accepted, ``--holdout`` whole
characters kept out for open-set evaluation); the data stages, train and evaluate run
through the core library exactly as the pipeline runs them. The trained model's numbers
are printed next to the untrained backbone's pooled ImageNet features, with the ratio and
the targets (val precision@1 >= 0.95, MAP@R >= 0.80, open-set precision@1 >= 0.85).

``--seeds 0 1 2`` trains once per seed on the same split and reports the mean, the
spread and the worst seed: with 156 validation queries one query is 0.0064 of
precision@1, so a single run cannot separate recipes closer than that. ``--check`` exits
with status 1 when the mean misses a target.

On a 2-core CPU an epoch at 160 px takes about 45 s (30 epochs: ~25 min per seed);
``-S train.epochs=1 -S train.batches_per_epoch=5`` is a smoke test of the machinery, not
a measurement.
"""

from __future__ import annotations

import argparse
import copy
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, without installing

from anime_face_id.balance import balance_train  # noqa: E402
from anime_face_id.collect import collect_all  # noqa: E402
from anime_face_id.config import ConfigError, Params, parse_params  # noqa: E402
from anime_face_id.crop import crop_all  # noqa: E402
from anime_face_id.errors import StageError  # noqa: E402
from anime_face_id.evaluate import evaluate  # noqa: E402
from anime_face_id.fileio import atomic_write_json  # noqa: E402
from anime_face_id.review import apply_review  # noqa: E402
from anime_face_id.split import split_dataset  # noqa: E402
from anime_face_id.train import format_duration, train  # noqa: E402

DEFAULT_FOLDER = REPO.parent / "shared" / "testdata" / "identities"
RECIPE_SECTIONS = ("split", "balance", "train", "evaluate")

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"change one recipe param ({', '.join(RECIPE_SECTIONS)}); repeatable",
    )
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--holdout", type=int, default=4, help="characters held out (open set)")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="train once per seed (default: train.seed)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the project here (default: temporary)")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return parser.parse_args(argv)


def character_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise SystemExit(f"{folder}: not a folder of per-character sub-directories")
    names = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if len(names) < 2:
        raise SystemExit(f"{folder}: need at least 2 character sub-directories, found {len(names)}")
    return names


def apply_override(recipe: dict, assignment: str) -> None:
    """``train.lr=1e-4`` sets recipe["train"]["lr"] to 0.0001 (the value is YAML)."""
    key, separator, text = assignment.partition("=")
    section, dot, name = key.strip().partition(".")
    if not separator or not dot or not name:
        raise ConfigError(f"-S {assignment!r}: expected SECTION.KEY=VALUE, e.g. train.lr=1e-4")
    if section not in RECIPE_SECTIONS:
        raise ConfigError(
            f"-S {assignment!r}: the benchmark's recipe has sections {', '.join(RECIPE_SECTIONS)}"
        )
    recipe.setdefault(section, {})[name] = yaml.safe_load(text)


def recipe_from(params_file: Path, overrides: list[str]) -> dict:
    """The recipe sections of params_file (unknown sections ignored), then the overrides."""
    try:
        data = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read {params_file}: {error}") from None
    recipe = {section: dict(data.get(section) or {}) for section in RECIPE_SECTIONS}
    for assignment in overrides:
        apply_override(recipe, assignment)
    return recipe


def build_params(recipe: dict, folder: Path, names: list[str], holdout: int, seed: int) -> Params:
    sections = copy.deepcopy(recipe)
    sections["split"]["holdout_characters"] = holdout
    sections["train"]["seed"] = seed
    sections["evaluate"]["seed"] = seed
    return parse_params(
        {
            "characters": [{"name": name} for name in names],
            "collect": {"backend": "folder", "folder": str(folder), "limit": 100000},
            "crop": {"detector": "none"},  # the folder holds crops already
            "review": {"require_complete": False},
            **sections,
        },
        "benchmark recipe",
    )


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name, action):
        started = time.perf_counter()
        result = action()
        self.seconds[name] = time.perf_counter() - started
        print(f"[{name}] done in {format_duration(self.seconds[name])}", flush=True)
        return result


def prepare_data(root: Path, params: Params, timer: Timer) -> None:
    timer("collect", lambda: collect_all(root, params))
    timer("crop", lambda: crop_all(root, params.crop))
    timer("review", lambda: apply_review(root, params))
    split = timer("split", lambda: split_dataset(root, params.split))
    for warning in split.warnings:
        print(f"  split warning: {warning}")
    timer("balance", lambda: balance_train(root, params.balance))


def train_and_evaluate(root: Path, params: Params, timer: Timer) -> dict:
    timer("train", lambda: train(root, params.train))
    report = timer("evaluate", lambda: evaluate(root, params.evaluate))
    report["timings_s"] = dict(timer.seconds)
    report["train_config"] = params.train.model_dump()
    return report


def lookup(report: dict, section: str, keys: tuple[str, ...]) -> float | None:
    value = report.get(section)
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, int | float) else None


def comparison(reports: list[dict]) -> list[dict]:
    """One row per metric: mean over the seeds' reports, spread, worst, baseline, target."""
    rows = []
    lower_is_better = {"val verification EER (lower is better)"}
    for section, keys, label, target in ROWS:
        values = [v for r in reports if (v := lookup(r, section, keys)) is not None]
        if not values:
            continue
        model = statistics.fmean(values)
        baseline_section = BASELINE_OF.get(section)
        baseline = lookup(reports[0], baseline_section, keys) if baseline_section else None
        rows.append(
            {
                "metric": label,
                "model": model,
                "per_seed": values,
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "worst": (max if label in lower_is_better else min)(values),
                "baseline": baseline,
                "ratio": model / baseline if baseline else None,
                "target": target,
                "passed": None if target is None else model >= target,
            }
        )
    return rows


def _cell(value: float | None, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def print_table(rows: list[dict], seeds: int) -> None:
    spread = f" {'± std':>6} {'worst':>6}" if seeds > 1 else ""
    header = (
        f"{'metric':40} {'model':>6}{spread} {'ImageNet':>8} {'ratio':>6} {'target':>7}  status"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        status = {True: "ok", False: "MISSED", None: ""}[row["passed"]]
        spread = f" {_cell(row['std']):>6} {_cell(row['worst']):>6}" if seeds > 1 else ""
        print(
            f"{row['metric']:40} {_cell(row['model']):>6}{spread} {_cell(row['baseline']):>8} "
            f"{_cell(row['ratio'], '{:.2f}x'):>6} {_cell(row['target'], '>={:.2f}'):>7}  {status}"
        )


def recipe_changes(recipe: dict, params_file: Path) -> dict:
    """The recipe's values that differ from params_file (what -S changed)."""
    base = recipe_from(params_file, [])
    return {
        f"{section}.{key}": value
        for section in RECIPE_SECTIONS
        for key, value in recipe[section].items()
        if base[section].get(key) != value
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = args.folder.resolve()
    names = character_folders(folder)
    try:
        recipe = recipe_from(args.params, args.overrides)
        seeds = args.seeds or [int(recipe["train"].get("seed", 0))]
        runs = [build_params(recipe, folder, names, args.holdout, seed) for seed in seeds]
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    changes = recipe_changes(recipe, args.params)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="anime-face-id-quality-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{len(names)} characters from {folder}; project in {root}")
    print(f"recipe: {args.params}" + (f" with {changes}" if changes else " (as is)"))
    print(f"train: {runs[0].train.model_dump(exclude={'seed'})}; seeds {seeds}", flush=True)
    reports = []
    try:
        timer = Timer()
        prepare_data(root, runs[0], timer)
        for params in runs:
            print(f"--- seed {params.train.seed}", flush=True)
            reports.append(train_and_evaluate(root, params, timer))
    except StageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    rows = comparison(reports)
    first = reports[0]
    print()
    print(
        f"{first['val']['num_characters']} val characters ({first['val']['num_images']} images), "
        f"{first.get('open_set', {}).get('num_characters', 0)} held out; "
        f"{runs[0].train.epochs} epoch(s) at {runs[0].train.image_size} px; seeds {seeds}, "
        f"best epochs {[r['checkpoint']['best_epoch'] for r in reports]}"
    )
    print_table(rows, len(seeds))
    if args.json:
        atomic_write_json(
            args.json,
            {
                "recipe": recipe,
                "changes": changes,
                "seeds": seeds,
                "rows": rows,
                "reports": reports,
            },
        )
    missed = [row["metric"] for row in rows if row["passed"] is False]
    if args.check and missed:
        print(f"\ntargets missed: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
