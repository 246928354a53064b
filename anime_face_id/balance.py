"""Bring every training character up to ``min_per_class`` rows, as an index.

The original project copied files to balance classes and split afterwards, so copies of
one image ended up on both sides. Here the split comes first and only the training split
is balanced: data/balanced/train.csv lists every training crop once (repeat 0) plus extra
rows that point at the same files (repeat 1, 2, ...). Extra rows are spread evenly: each
original is repeated either floor or ceil of the average, and which ones get the extra
copy is drawn from an RNG seeded by (seed, slug).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from anime_face_id import layout
from anime_face_id.config import BalanceConfig
from anime_face_id.errors import StageError
from anime_face_id.fileio import group_by, sweep_temporaries, write_csv
from anime_face_id.split import derived_rng


@dataclass
class BalanceSummary:
    rows: list[dict]  # per character: character, slug, original, balanced


def extra_copies(count: int, minimum: int, rng: random.Random) -> list[int]:
    """Extra copies per original so that ``count`` originals reach ``minimum`` rows:
    each gets floor or ceil of the average, the ceil ones chosen by ``rng``."""
    missing = max(0, minimum - count)
    base, remainder = divmod(missing, count)
    copies = [base] * count
    for index in rng.sample(range(count), remainder):
        copies[index] += 1
    return copies


def _balanced_rows(rows: list[dict[str, str]], config: BalanceConfig, slug: str) -> list[dict]:
    rows = sorted(rows, key=lambda row: row["path"])
    copies = extra_copies(
        len(rows), config.min_per_class, derived_rng(config.seed, "balance", slug)
    )
    augment = 1 if config.method == "augment" else 0
    out = []
    for row, extra in zip(rows, copies, strict=True):
        base = {"character": row["character"], "slug": slug, "path": row["path"]}
        out.append({**base, "repeat": 0, "augment": 0})
        out.extend({**base, "repeat": repeat, "augment": augment} for repeat in range(1, extra + 1))
    return out


def balance_train(root: Path, config: BalanceConfig) -> BalanceSummary:
    """Write data/balanced/train.csv from data/splits/train.csv (never from val/test)."""
    root = Path(root)
    rows = layout.read_table(root, layout.split_csv("train"), layout.SPLIT_COLUMNS, "split")
    # The index written here tells the train stage which files to open.
    checks = {"slug": layout.require_slug, "path": lambda path: layout.project_path(root, path)}
    layout.check_rows(layout.split_csv("train"), rows, checks)
    by_slug = group_by(rows, "slug")
    if not by_slug:
        raise StageError(f"{layout.split_csv('train').as_posix()} has no rows: nothing to train on")
    output, summary = [], []
    for slug in sorted(by_slug):
        rows = _balanced_rows(by_slug[slug], config, slug)
        output.extend(rows)
        summary.append(
            {
                "character": rows[0]["character"],
                "slug": slug,
                "original": len(by_slug[slug]),
                "balanced": len(rows),
            }
        )
    sweep_temporaries(root / layout.BALANCED_DIR)
    write_csv(root / layout.BALANCED_TRAIN, layout.BALANCED_COLUMNS, output)
    return BalanceSummary(summary)
