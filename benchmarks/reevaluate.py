"""An evaluation-time setting measured on trained weights: the projects ``quality.py
--workdir DIR`` keeps, evaluated again with one of the train settings that change the
vectors the network gives but not its training, beside the figures they were trained with.

    python benchmarks/reevaluate.py DIR/split-*/seed-*/project -S train.append_features=trained
                                    [-S train.append_weight=0.5] [--json FILE] [--keep NEW]

Those settings are ``train.append_features``, ``train.append_weight`` and
``train.flip_test``: the losses never see them, so a run with the setting trains the same
weights (training is deterministic per seed on one machine) and differs in one place only:
the epoch it keeps is chosen by val MAP@R on its own vectors. Each project is copied to a
temporary folder, its checkpoint written again with the setting (the same weights; the
ImageNet copy of ``append_features: imagenet`` from the offline package), and evaluated
through the core library as the evaluate stage does; the kept project is not touched.
``--keep NEW`` keeps the copies, evaluated, under the folder NEW (each project's path below
the projects' common folder, e.g. ``NEW/split-0/seed-0/project``), for the benchmarks that
read kept projects (``thresholds.py``, ``unknown_faces.py``, ``rescoring.py``).

Prints the projects' stored figures (``metrics/eval.json``) and the new ones pooled, as
``quality.py`` prints them, then each metric's mean change and on how many projects it
rose and fell. Exit status 2, before any work, for a setting training would see, a
folder that is not a kept project or a ``--keep`` folder that already holds one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anime_face_id.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from anime_face_id.config import (  # noqa: E402
    ConfigError,
    EvaluateConfig,
    TrainConfig,
    describe_validation_error,
)
from anime_face_id.evaluate import evaluate  # noqa: E402
from anime_face_id.fileio import atomic_write_json  # noqa: E402
from anime_face_id.layout import EMBEDDER  # noqa: E402
from anime_face_id.model.embedder import build_embedder  # noqa: E402
from benchmarks.quality import apply_override, comparison, print_table  # noqa: E402

EVALUATION_ONLY = ("append_features", "append_weight", "flip_test")
STORED_REPORT = Path("metrics") / "eval.json"
COPY_IGNORED = shutil.ignore_patterns("plots", "embeddings.npz")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("projects", nargs="+", type=Path, metavar="PROJECT")
    parser.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[],
        metavar="train.KEY=VALUE", help=f"one of train.{', train.'.join(EVALUATION_ONLY)}",
    )  # fmt: skip
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="cpu")
    parser.add_argument("--json", type=Path, help="also write both reports of every project")
    parser.add_argument("--keep", type=Path, metavar="NEW", help="keep the evaluated copies here")
    return parser.parse_args(argv)


def evaluation_changes(overrides: list[str]) -> dict:
    """The ``-S`` assignments as train settings, refused unless training never sees them."""
    if not overrides:
        raise ConfigError(
            f"give a setting to change: -S train.KEY=VALUE, KEY one of {EVALUATION_ONLY}"
        )
    recipe: dict = {}
    for assignment in overrides:
        apply_override(recipe, assignment)
    changes = recipe.pop("train", {})
    if recipe:
        raise ConfigError(f"only train settings change here, not {', '.join(sorted(recipe))}")
    trained_on = sorted(set(changes) - set(EVALUATION_ONLY))
    if trained_on:
        raise ConfigError(
            f"train.{trained_on[0]} changes the training, so it needs a run of its own "
            f"(benchmarks/quality.py -S train.{trained_on[0]}=...); here only "
            f"{', '.join(EVALUATION_ONLY)}"
        )
    try:  # a bad value is refused before any work
        TrainConfig.model_validate(changes)
    except ValidationError as error:
        raise ConfigError(f"-S train settings: {describe_validation_error(error)}") from None
    return changes


def require_kept_project(project: Path) -> None:
    for needed in (EMBEDDER, STORED_REPORT):
        if not (project / needed).is_file():
            raise ConfigError(
                f"{project}: no {needed}; give the projects benchmarks/quality.py --workdir "
                "DIR keeps (DIR/split-N/seed-M/project or DIR/seed-M/project)"
            )


def rewrite_checkpoint(source: Path, destination: Path, changes: dict) -> None:
    """``source``'s weights in a checkpoint whose config carries ``changes``."""
    loaded = load_checkpoint(source)
    config = TrainConfig.model_validate({**loaded.config.model_dump(), **changes})
    # only the frozen ImageNet copy comes from the package (the untrained backbone); every
    # other weight is the file's
    model = build_embedder(
        config, loaded.embedding_dim, pretrained=config.append_features == "imagenet"
    )
    weights = {k: v for k, v in loaded.model.state_dict().items() if not k.startswith("imagenet.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(not key.startswith("imagenet.") for key in missing):
        raise ConfigError(
            f"{source}: weights do not fit: missing {missing}, unexpected {unexpected}"
        )
    save_checkpoint(
        destination, model, config, loaded.class_names, loaded.best_epoch, loaded.val_metrics
    )


def kept_copies(projects: list[Path], keep: Path) -> list[Path]:
    """Where each project's evaluated copy goes: its path below the projects' common
    folder, under ``keep``. Refused when one is there already (nothing is overwritten)."""
    resolved = [project.resolve() for project in projects]
    common = Path(os.path.commonpath([project.parent for project in resolved]))
    copies = [keep / project.relative_to(common) for project in resolved]
    for copy in copies:
        if copy.exists():
            raise ConfigError(f"{copy} exists already; give --keep an empty or new folder")
    return copies


def reevaluate(project: Path, changes: dict, device: str, keep_as: Path | None = None) -> dict:
    """evaluate's report for ``project``'s weights with ``changes``, from a copy (moved to
    ``keep_as`` when evaluated, when given)."""
    with tempfile.TemporaryDirectory(prefix="reevaluate-") as scratch:
        copy = Path(scratch) / "project"
        shutil.copytree(project, copy, ignore=COPY_IGNORED)
        rewrite_checkpoint(project / EMBEDDER, copy / EMBEDDER, changes)
        report = evaluate(copy, EvaluateConfig(baseline=False, device=device))
        if keep_as is not None:  # whole or not at all: a stopped run leaves no half copy
            keep_as.parent.mkdir(parents=True, exist_ok=True)
            partial = keep_as.with_name(f".{keep_as.name}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(copy, partial)
            partial.rename(keep_as)
        return report


def print_changes(before: list[dict], after: list[dict]) -> None:
    """Each metric's mean change over the projects, and on how many it rose and fell."""
    new_rows = {row["metric"]: row for row in comparison(after)}
    print(f"{'metric':44} {'change':>7}  up / down (of {len(before)})")
    for old in comparison(before):
        new = new_rows.get(old["metric"])
        if new is None or len(new["per_seed"]) != len(old["per_seed"]):
            continue  # a figure some of the reports lack: no pairs to compare
        deltas = [b - a for a, b in zip(old["per_seed"], new["per_seed"], strict=True)]
        up, down = sum(d > 1e-9 for d in deltas), sum(d < -1e-9 for d in deltas)
        print(f"{old['metric']:44} {statistics.fmean(deltas):+7.3f}  {up} / {down}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        changes = evaluation_changes(args.overrides)
        for project in args.projects:
            require_kept_project(project)
        copies = kept_copies(args.projects, args.keep) if args.keep else [None] * len(args.projects)
    except ConfigError as error:
        print(f"reevaluate: {error}", file=sys.stderr)
        return 2
    before, after = [], []
    for number, (project, copy) in enumerate(zip(args.projects, copies, strict=True), 1):
        print(f"[{number}/{len(args.projects)}] {project}", flush=True)
        before.append(json.loads((project / STORED_REPORT).read_text()))
        after.append(reevaluate(project, changes, args.device, copy))
    setting = " ".join(f"train.{key}={value}" for key, value in changes.items())
    print(f"\nas trained ({len(before)} projects)")
    print_table(comparison(before), len(before))
    print(f"\nthe same weights, {setting}")
    print_table(comparison(after), len(after))
    print()
    print_changes(before, after)
    if args.json:
        atomic_write_json(
            args.json,
            {
                "changes": changes,
                "projects": [str(p) for p in args.projects],
                "as_trained": before,
                "reevaluated": after,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
