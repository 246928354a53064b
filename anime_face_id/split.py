"""Per-character train/val/test split that keeps near-duplicates on one side.

Web image searches return the same picture many times (re-encoded, resized, cropped
differently) and one picture can hold several crops. If copies of one picture sat on both
sides of the split, evaluation would measure memory, not recognition, so crops are first
grouped into clusters (same source image, or a perceptual hash within
``phash_distance`` bits of another crop's) and whole clusters are assigned.

Reproducibility: every character draws from its own RNG seeded by (seed, slug), so adding
or removing a character never moves another character's crops.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from anime_face_id import layout
from anime_face_id.config import SplitConfig
from anime_face_id.errors import BadRow, StageError
from anime_face_id.fileio import group_by, sweep_temporaries, write_csv

EVAL_SPLITS = ("val", "test")


@dataclass
class SplitSummary:
    rows: list[dict]  # per character: character, slug, train, val, test, holdout, clusters
    warnings: list[str]


def derived_rng(seed: int, *parts: str) -> random.Random:
    """An RNG that depends only on ``seed`` and ``parts`` (never on Python's salted hash)."""
    key = ":".join([str(seed), *parts]).encode("utf-8")
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


class _UnionFind:
    def __init__(self, size: int):
        self.parent = list(range(size))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]  # path halving
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def _hash_values(hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes as uint64, and a mask of the ones that are present and valid."""
    values = np.zeros(len(hashes), dtype=np.uint64)
    valid = np.zeros(len(hashes), dtype=bool)
    for index, text in enumerate(hashes):
        try:
            number = int(text, 16)
        except (TypeError, ValueError):
            continue
        if 0 <= number < 2**64:
            values[index], valid[index] = number, True
    return values, valid


def _union_close_hashes(groups: _UnionFind, hashes: Sequence[str], max_distance: int) -> None:
    values, valid = _hash_values(hashes)
    for i in np.flatnonzero(valid):
        later = np.arange(i + 1, len(hashes))
        later = later[valid[later]]
        distances = np.bitwise_count(values[later] ^ values[i])
        for j in later[distances <= max_distance]:
            groups.union(int(i), int(j))


def near_duplicate_clusters(
    sources: Sequence[str], phashes: Sequence[str], source_phashes: Sequence[str], max_distance: int
) -> list[int]:
    """Cluster label per item (the smallest index in its cluster): items are linked when
    they share a source, or their phashes, or their source phashes, are within
    ``max_distance`` bits; clusters are the transitive closure of those links. Empty or
    malformed values link nothing."""
    groups = _UnionFind(len(sources))
    first_of_source: dict[str, int] = {}
    for index, source in enumerate(sources):
        if source:
            groups.union(first_of_source.setdefault(source, index), index)
    _union_close_hashes(groups, phashes, max_distance)
    _union_close_hashes(groups, source_phashes, max_distance)
    return [groups.find(index) for index in range(len(sources))]


@dataclass
class _Cluster:
    id: str
    rows: list[dict[str, str]]


def _clusters(rows: list[dict[str, str]], slug: str, max_distance: int) -> list[_Cluster]:
    rows = sorted(rows, key=lambda row: row["path"])
    labels = near_duplicate_clusters(
        [row.get("source_sha256") or row.get("source") or "" for row in rows],
        [row.get("phash", "") for row in rows],
        [row.get("source_phash", "") for row in rows],
        max_distance,
    )
    members: dict[int, list[dict[str, str]]] = defaultdict(list)
    for label, row in zip(labels, rows, strict=True):
        members[label].append(row)
    clusters = []
    for group in members.values():
        # Named after its first path, so the id survives crops being added elsewhere.
        digest = hashlib.sha256(group[0]["path"].encode("utf-8")).hexdigest()[:12]
        clusters.append(_Cluster(f"{slug}:{digest}", group))
    return sorted(clusters, key=lambda cluster: cluster.id)


TRAIN_CLUSTERS_KEPT = 2  # before an evaluation split gets a crop its share rounds away


def _round(value: float) -> int:
    return int(value + 0.5)  # half up: Python's round() would send 2.5 to 2


def split_targets(size: int, clusters: int, config: SplitConfig) -> dict[str, int]:
    """Crops wanted per split. An evaluation split whose share rounds to nothing still
    asks for one crop while clusters are left over after train's two (a character needs two
    distinct training crops to be trained on at all: an anchor and its positive)."""
    targets = {"val": _round(size * config.val), "test": _round(size * config.test)}
    spare = clusters - TRAIN_CLUSTERS_KEPT
    for name in EVAL_SPLITS:
        if getattr(config, name) > 0 and targets[name] == 0 and spare > 0:
            targets[name] = 1
        spare -= targets[name] > 0
    targets["train"] = max(1, size - targets["val"] - targets["test"])
    return targets


def assign_clusters(
    clusters: list[_Cluster], config: SplitConfig, rng: random.Random
) -> dict[str, str]:
    """cluster id -> split. Largest clusters first (ties in random order), the first to
    train, each next one to the split furthest below its target."""
    order = list(clusters)
    rng.shuffle(order)
    order.sort(key=lambda cluster: len(cluster.rows), reverse=True)  # stable: keeps the shuffle
    size = sum(len(cluster.rows) for cluster in clusters)
    targets = split_targets(size, len(clusters), config)
    filled = {"train": 0, "val": 0, "test": 0}
    assignment: dict[str, str] = {}
    for index, cluster in enumerate(order):
        if index == 0:
            name = "train"
        else:
            name = max(("train", *EVAL_SPLITS), key=lambda split: targets[split] - filled[split])
        assignment[cluster.id] = name
        filled[name] += len(cluster.rows)
    return assignment


def _split_row(row: dict[str, str], cluster: str) -> dict[str, str]:
    return {
        "character": row["character"],
        "slug": row["slug"],
        "path": row["path"],
        "source": row["source"],
        "cluster": cluster,
    }


def _eligible(
    by_slug: dict[str, list[dict[str, str]]], config: SplitConfig
) -> tuple[list[str], list[str]]:
    eligible, warnings = [], []
    for slug, rows in sorted(by_slug.items()):
        if len(rows) < config.min_per_character:
            warnings.append(
                f"{rows[0]['character']} ({slug}) has {len(rows)} curated crop(s), fewer than "
                f"split.min_per_character={config.min_per_character}: left out of every split"
            )
        else:
            eligible.append(slug)
    if len(eligible) < 2:
        raise StageError(
            f"only {len(eligible)} character(s) have at least split.min_per_character="
            f"{config.min_per_character} curated crops; training needs at least 2. Collect or "
            "accept more crops, or lower split.min_per_character in params.yaml."
        )
    if len(eligible) - config.holdout_characters < 2:
        raise StageError(
            f"split.holdout_characters={config.holdout_characters} leaves "
            f"{len(eligible) - config.holdout_characters} of {len(eligible)} characters for "
            "training; at least 2 are needed. Lower split.holdout_characters in params.yaml."
        )
    return eligible, warnings


def _one_row_per_path(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[str]]:
    """The first row of each crop, and a warning per repeated one: a crop listed twice
    would count twice, and under two characters it would land in two splits at once."""
    first: dict[str, tuple[int, dict[str, str]]] = {}
    warnings = []
    for line, row in enumerate(rows, start=2):  # the header is line 1
        crop = PurePosixPath(row["path"]).as_posix()  # a/./b.png and a//b.png are a/b.png
        if crop not in first:
            first[crop] = (line, row)
            continue
        earlier_line, earlier = first[crop]
        if earlier["slug"] != row["slug"]:
            raise BadRow(
                layout.posix(layout.CURATED_MANIFEST),
                line,
                "slug",
                f"{row['path']} is listed as {earlier['slug']!r} on line {earlier_line} and "
                f"as {row['slug']!r} here: one crop is one character; fix the review",
            )
        warnings.append(
            f"{layout.posix(layout.CURATED_MANIFEST)} line {line}: {row['path']} is listed "
            f"again (first on line {earlier_line}); counted once"
        )
    return [row for _line, row in first.values()], warnings


def untrainable(character: str, train: int, crops: int) -> str:
    return (
        f"{character}: {train} training crop(s) of {crops} after the split; triplet batches "
        "need 2 distinct ones, so it will not be trained on. Collect more pictures, lower "
        "split.val / split.test, or raise split.min_per_character to leave it out"
    )


def split_dataset(root: Path, config: SplitConfig) -> SplitSummary:
    """Write data/splits/{train,val,test,holdout}.csv from data/curated/manifest.csv."""
    root = Path(root)
    rows = layout.read_table(root, layout.CURATED_MANIFEST, layout.CURATED_COLUMNS, "review")
    # The slugs and paths written here become folders and files the later stages open.
    checks = {"slug": layout.require_slug, "path": lambda path: layout.project_path(root, path)}
    layout.check_rows(layout.CURATED_MANIFEST, rows, checks)
    rows, repeated = _one_row_per_path(rows)
    by_slug = group_by(rows, "slug")
    eligible, warnings = _eligible(by_slug, config)
    warnings = repeated + warnings
    held_out = set(derived_rng(config.seed, "holdout").sample(eligible, config.holdout_characters))

    outputs: dict[str, list[dict[str, str]]] = {name: [] for name in layout.SPLIT_NAMES}
    summary = []
    for slug in sorted(by_slug):
        rows = by_slug[slug]
        counts = {
            "character": rows[0]["character"],
            "slug": slug,
            "train": 0,
            "val": 0,
            "test": 0,
            "holdout": 0,
            "clusters": 0,
        }
        summary.append(counts)
        if slug not in eligible:
            continue
        clusters = _clusters(rows, slug, config.phash_distance)
        counts["clusters"] = len(clusters)
        if slug in held_out:
            assignment = {cluster.id: "holdout" for cluster in clusters}
        else:
            assignment = assign_clusters(clusters, config, derived_rng(config.seed, "split", slug))
        for cluster in clusters:
            name = assignment[cluster.id]
            outputs[name].extend(_split_row(row, cluster.id) for row in cluster.rows)
            counts[name] += len(cluster.rows)
        if slug not in held_out and counts["train"] < 2:
            warnings.append(untrainable(counts["character"], counts["train"], len(rows)))

    sweep_temporaries(root / layout.SPLITS_DIR)
    for name, rows in outputs.items():
        rows.sort(key=lambda row: (row["slug"], row["path"]))
        write_csv(root / layout.split_csv(name), layout.SPLIT_COLUMNS, rows)
    return SplitSummary(summary, warnings)
