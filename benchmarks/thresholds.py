"""What the unknown-face threshold does to named and unseen faces, calibrated three ways, on
the embeddings kept projects stored: the table of the README's "Identifying characters".

    python benchmarks/thresholds.py DIR/split-*/seed-*/project [--json FILE]

Each PROJECT is a trained and evaluated project with held-out characters
(``benchmarks/quality.py --workdir DIR`` keeps them; ``benchmarks/reevaluate.py --keep``
keeps re-evaluated ones). Nothing is recomputed by the network. Every way names the test
faces (characters trained on, seen by neither training nor calibration) and the held-out
characters' faces (never trained on) as ``identify`` does, with the package stage's
``build_gallery`` and exact search:

* val alone: the training split's gallery, the threshold at the equal-error point of the
  val faces' genuine and impostor scores (the package stage's default; evaluate's
  ``naming`` section gives the same figures).
* val and half the held-out characters: the held-out characters (sorted by name) are cut in
  two halves; one half's faces join the impostors of the calibration (as
  ``split.holdout_characters`` does), the other half is measured, then the other way round.
  A project's figures are the mean of the two ways. Needs 2 or more held-out characters.
* a bigger gallery: the train and val faces together (what ``package.gallery_source:
  curated`` gives, less the test faces it would also hold), the threshold of val alone.

Printed per way: test faces named right, called unknown, named wrong, and the held-out
faces called unknown, as mean ± std between projects (min-max), then the mean threshold.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anime_face_id.evaluation_data import EmbeddedSplit  # noqa: E402
from anime_face_id.fileio import atomic_write_json  # noqa: E402
from anime_face_id.gallery import Gallery  # noqa: E402
from anime_face_id.naming_outcomes import (  # noqa: E402
    gallery_calibrated_on_val,
    known_face_outcomes,
    unknown_face_outcomes,
)
from benchmarks.rescoring import project_splits  # noqa: E402

EMBEDDER = "benchmark"  # the gallery's checkpoint fingerprint: nothing checks it here
FIGURES = ("named_right", "called_unknown", "named_wrong", "unseen_called_unknown", "threshold")


def embedded_splits(root: Path) -> dict[str, EmbeddedSplit]:
    """train, val, test and holdout of a kept project, with the embeddings it stored."""
    return {
        name: EmbeddedSplit([f"{name}/{i}" for i in range(len(labels))], labels, embeddings)
        for name, (embeddings, labels) in project_splits(root, with_holdout=True).items()
    }


def outcomes(gallery: Gallery, splits: dict, unseen: EmbeddedSplit) -> dict[str, float]:
    """Test faces of characters in the gallery, as evaluate's ``naming`` counts them, and
    the ``unseen`` faces called unknown."""
    test = splits["test"]
    known = known_face_outcomes(gallery, test.where(np.isin(test.labels, gallery.class_names)))
    return {
        "named_right": known["named_right"],
        "called_unknown": known["called_unknown"],
        "named_wrong": known["named_wrong"],
        "unseen_called_unknown": unknown_face_outcomes(gallery, unseen)["called_unknown"],
        "threshold": gallery.threshold,
    }


def gallery_of(gallery: list[EmbeddedSplit], splits: dict, impostors=None) -> Gallery:
    """``gallery``'s faces, the threshold calibrated on val (and ``impostors``)."""
    return gallery_calibrated_on_val(
        splits["train"], splits["val"], EMBEDDER, gallery=gallery, impostors=impostors
    )


def val_alone(splits: dict) -> dict[str, float]:
    gallery = gallery_of([splits["train"]], splits)
    return outcomes(gallery, splits, splits["holdout"])


def held_out_halves(split: EmbeddedSplit) -> list[tuple[EmbeddedSplit, EmbeddedSplit]]:
    """(calibrated with, measured on) both ways round: the first half of the held-out
    characters by name, then the second."""
    characters = sorted(set(split.labels.tolist()))
    first = np.isin(split.labels, characters[: len(characters) // 2])
    return [(split.where(first), split.where(~first)), (split.where(~first), split.where(first))]


def val_and_held_out_half(splits: dict) -> dict[str, float]:
    ways = [
        outcomes(gallery_of([splits["train"]], splits, calibrated_with), splits, measured)
        for calibrated_with, measured in held_out_halves(splits["holdout"])
    ]
    return {key: statistics.fmean(way[key] for way in ways) for key in FIGURES}


def bigger_gallery(splits: dict) -> dict[str, float]:
    gallery = gallery_of([splits["train"], splits["val"]], splits)
    return outcomes(gallery, splits, splits["holdout"])


WAYS: dict[str, Callable[[dict], dict[str, float]]] = {
    "val alone (the default)": val_alone,
    "val and half the held-out characters": val_and_held_out_half,
    "train + val gallery, threshold of val alone": bigger_gallery,
}


def measure(roots: list[Path]) -> dict:
    splits = [embedded_splits(root) for root in roots]
    for root, split in zip(roots, splits, strict=True):
        held_out = len(set(split["holdout"].labels.tolist()))
        if held_out < 2:
            raise SystemExit(
                f"{root}: {held_out} held-out character(s); the calibration with half of "
                "them needs 2 or more (benchmarks/quality.py --holdout 2)"
            )
    return {
        "projects": [str(root) for root in roots],
        "ways": {name: [way(split) for split in splits] for name, way in WAYS.items()},
    }


def spread(values: list[float]) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {deviation:.3f} ({min(values):.3f}-{max(values):.3f})"


def table(result: dict) -> str:
    columns = ("named right", "called unknown", "named wrong", "unseen called unknown")
    lines = [
        f"{len(result['projects'])} projects; test faces of trained characters, then held-out "
        "characters' faces (mean ± std between projects, min-max)",
        f"{'threshold calibrated on':44s}" + "".join(f"{c:>28s}" for c in columns) + "  threshold",
    ]
    for name, per_project in result["ways"].items():
        cells = [spread([p[key] for p in per_project]) for key in FIGURES[:4]]
        threshold = statistics.fmean(p["threshold"] for p in per_project)
        lines.append(f"{name:44s}" + "".join(f"{c:>28s}" for c in cells) + f"  {threshold:9.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("projects", nargs="+", type=Path, help="trained, evaluated projects")
    parser.add_argument("--json", type=Path, help="also write every project's figures here")
    args = parser.parse_args(argv)
    result = measure(args.projects)
    print(table(result))
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
