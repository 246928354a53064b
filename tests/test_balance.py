"""Balancing the training split: an index of originals plus evenly spread repeats."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from anime_face_id import layout
from anime_face_id.balance import balance_train
from anime_face_id.config import BalanceConfig
from anime_face_id.errors import StageError
from anime_face_id.fileio import read_csv, write_csv

TRAIN_SIZES = {"alice": 5, "bob": 13, "carol": 32, "dave": 40, "erin": 1}


def split_rows(slug: str, count: int, split: str) -> list[dict]:
    return [
        {
            "character": slug.title(),
            "slug": slug,
            "path": f"data/faces/{slug}/{split}_{index:03d}.png",
            "source": f"data/raw/{slug}/{split}_{index:03d}.png",
            "cluster": f"{slug}:{split}{index}",
        }
        for index in range(count)
    ]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    train = [row for slug, count in TRAIN_SIZES.items() for row in split_rows(slug, count, "train")]
    write_csv(tmp_path / layout.split_csv("train"), layout.SPLIT_COLUMNS, train)
    for split in ("val", "test"):
        rows = [row for slug in TRAIN_SIZES for row in split_rows(slug, 3, split)]
        write_csv(tmp_path / layout.split_csv(split), layout.SPLIT_COLUMNS, rows)
    return tmp_path


def balanced(root: Path) -> list[dict]:
    return read_csv(root / layout.BALANCED_TRAIN, layout.BALANCED_COLUMNS)


def test_every_class_reaches_the_minimum_with_evenly_spread_repeats(root):
    summary = balance_train(root, BalanceConfig(min_per_class=32, method="oversample"))
    rows = balanced(root)
    per_class = Counter(row["slug"] for row in rows)
    assert per_class == {"alice": 32, "bob": 32, "carol": 32, "dave": 40, "erin": 32}
    assert {row["slug"]: (row["original"], row["balanced"]) for row in summary.rows} == {
        slug: (count, max(count, 32)) for slug, count in TRAIN_SIZES.items()
    }
    for slug, count in TRAIN_SIZES.items():
        uses = Counter(row["path"] for row in rows if row["slug"] == slug)
        assert len(uses) == count
        # Each original is used floor or ceil of the average number of times.
        assert max(uses.values()) - min(uses.values()) <= 1
        assert sum(uses.values()) == max(count, 32)


def test_originals_appear_once_with_repeat_zero_and_repeats_count_up(root):
    balance_train(root, BalanceConfig(min_per_class=32))
    rows = balanced(root)
    train = read_csv(root / layout.split_csv("train"))
    originals = [row["path"] for row in rows if row["repeat"] == "0"]
    assert sorted(originals) == sorted(row["path"] for row in train)
    repeats: dict[str, list[int]] = {}
    for row in rows:
        repeats.setdefault(row["path"], []).append(int(row["repeat"]))
    assert all(sorted(values) == list(range(len(values))) for values in repeats.values())


def test_only_training_rows_are_used(root):
    balance_train(root, BalanceConfig(min_per_class=50))
    paths = {row["path"] for row in balanced(root)}
    assert paths == {row["path"] for row in read_csv(root / layout.split_csv("train"))}
    assert all("/train_" in path for path in paths)


@pytest.mark.parametrize(("method", "flag"), [("oversample", "0"), ("augment", "1")])
def test_augment_flag_marks_extra_rows_by_method(root, method, flag):
    balance_train(root, BalanceConfig(min_per_class=32, method=method))
    rows = balanced(root)
    assert {row["augment"] for row in rows if row["repeat"] == "0"} == {"0"}
    assert {row["augment"] for row in rows if row["repeat"] != "0"} == {flag}


def test_same_seed_same_index_and_the_seed_picks_the_extra_copies(root):
    balance_train(root, BalanceConfig(min_per_class=32, seed=1))
    first = (root / layout.BALANCED_TRAIN).read_bytes()
    balance_train(root, BalanceConfig(min_per_class=32, seed=1))
    assert (root / layout.BALANCED_TRAIN).read_bytes() == first
    chosen = set()
    for seed in range(4):
        balance_train(root, BalanceConfig(min_per_class=32, seed=seed))
        uses = Counter(row["path"] for row in balanced(root) if row["slug"] == "bob")
        top = max(uses.values())
        chosen.add(frozenset(path for path, count in uses.items() if count == top))
    assert len(chosen) > 1  # bob: 13 originals, 19 extras: which 6 get a third use varies


def test_missing_or_empty_train_split_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="run the split stage first"):
        balance_train(tmp_path, BalanceConfig())
    write_csv(tmp_path / layout.split_csv("train"), layout.SPLIT_COLUMNS, [])
    with pytest.raises(StageError, match="no rows"):
        balance_train(tmp_path, BalanceConfig())
