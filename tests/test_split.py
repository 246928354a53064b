"""The split: no near-duplicate leakage, reproducibility, holdout, fractions, clustering."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from anime_face_id import layout
from anime_face_id.config import SplitConfig
from anime_face_id.errors import StageError
from anime_face_id.fileio import read_csv, write_csv
from anime_face_id.imaging import phash, phash_distance
from anime_face_id.split import near_duplicate_clusters, split_dataset


def random_hash(rng: np.random.Generator) -> str:
    return rng.bytes(8).hex()


def random_sha(rng: np.random.Generator) -> str:
    return hashlib.sha256(rng.bytes(16)).hexdigest()


def crop_row(name: str, index: int, sha: str, crop_hash: str, source_hash: str) -> dict:
    slug = name.lower()
    return {
        "character": name,
        "slug": slug,
        "path": f"data/faces/{slug}/{index:04d}.png",
        "source": f"data/raw/{slug}/{sha}.png",
        "source_sha256": sha,
        "phash": crop_hash,
        "source_phash": source_hash,
        "origin": "detector",
        "status": "accepted",
    }


def distinct_crops(name: str, count: int, rng: np.random.Generator, start: int = 0) -> list[dict]:
    """``count`` crops of ``count`` unrelated pictures."""
    return [
        crop_row(name, start + i, random_sha(rng), random_hash(rng), random_hash(rng))
        for i in range(count)
    ]


def write_curated(root: Path, rows: list[dict]) -> None:
    write_csv(root / layout.CURATED_MANIFEST, layout.CURATED_COLUMNS, rows)


def read_splits(root: Path) -> dict[str, list[dict]]:
    return {
        name: read_csv(root / layout.split_csv(name), layout.SPLIT_COLUMNS)
        for name in layout.SPLIT_NAMES
    }


def side_of(root: Path) -> dict[str, str]:
    return {row["path"]: name for name, rows in read_splits(root).items() for row in rows}


def smooth_image(rng: np.random.Generator) -> np.ndarray:
    """A low-frequency picture: its perceptual hash is stable under slight noise."""
    grid = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(grid).resize((64, 64), Image.BILINEAR), dtype=np.float64)


def near_copy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Re-encoded-looking copy: a little noise and a brightness shift."""
    return np.clip(image + rng.normal(0, 2.0, image.shape) + 4, 0, 255)


def hash_of(image: np.ndarray) -> str:
    return phash(Image.fromarray(image.astype(np.uint8)))


def planted_project(root: Path) -> list[list[str]]:
    """Alice's crops with planted near-duplicate groups; returns the groups (paths)."""
    rng = np.random.default_rng(11)
    rows, groups = [], []
    for index in range(24):
        image = smooth_image(rng)
        original = crop_row("Alice", index, random_sha(rng), hash_of(image), random_hash(rng))
        rows.append(original)
        if index < 6:  # the same picture found again at another URL, re-encoded
            copy_hash = hash_of(near_copy(image, rng))
            assert phash_distance(copy_hash, original["phash"]) <= 3
            rows.append(
                crop_row("Alice", 100 + index, random_sha(rng), copy_hash, random_hash(rng))
            )
            groups.append([original["path"], rows[-1]["path"]])
    for picture in range(4):  # several faces on one picture
        sha, source_hash = random_sha(rng), random_hash(rng)
        group = [
            crop_row("Alice", 200 + 3 * picture + i, sha, random_hash(rng), source_hash)
            for i in range(3)
        ]
        rows += group
        groups.append([row["path"] for row in group])
    # A chain: a near-copy of one face of a multi-face picture joins that whole picture.
    image = smooth_image(rng)
    sha = random_sha(rng)
    chain = [crop_row("Alice", 300, sha, hash_of(image), random_hash(rng))]
    chain.append(crop_row("Alice", 301, sha, random_hash(rng), chain[0]["source_phash"]))
    chain.append(
        crop_row("Alice", 302, random_sha(rng), hash_of(near_copy(image, rng)), random_hash(rng))
    )
    rows += chain
    groups.append([row["path"] for row in chain])
    # Two different downloads of one picture (resized): different sha, same-looking source.
    source_hash = random_hash(rng)
    close_source = f"{int(source_hash, 16) ^ 0b101:016x}"
    pair = [
        crop_row("Alice", 400, random_sha(rng), random_hash(rng), source_hash),
        crop_row("Alice", 401, random_sha(rng), random_hash(rng), close_source),
    ]
    rows += pair
    groups.append([row["path"] for row in pair])
    write_curated(root, rows + distinct_crops("Bob", 20, rng))
    return groups


def test_planted_near_duplicates_never_cross_splits(tmp_path):
    groups = planted_project(tmp_path)
    evaluation_sides = set()
    for seed in range(12):
        split_dataset(tmp_path, SplitConfig(val=0.2, test=0.2, seed=seed))
        side = side_of(tmp_path)
        for group in groups:
            assert len({side[path] for path in group}) == 1, (seed, group)
            evaluation_sides.add(side[group[0]])
        cluster_of = {
            row["path"]: row["cluster"] for rows in read_splits(tmp_path).values() for row in rows
        }
        for group in groups:
            assert len({cluster_of[path] for path in group}) == 1
    # The groups do get drawn into val and test, so the check above had something to catch.
    assert evaluation_sides >= {"val", "test", "train"}


def test_near_copy_pairs_are_separate_clusters_at_distance_zero(tmp_path):
    groups = planted_project(tmp_path)
    crop_hash = {row["path"]: row["phash"] for row in read_csv(tmp_path / layout.CURATED_MANIFEST)}
    split_dataset(tmp_path, SplitConfig(phash_distance=0))
    cluster_of = {
        row["path"]: row["cluster"] for rows in read_splits(tmp_path).values() for row in rows
    }
    # Near copies (linked only by a close phash) that differ in a bit or more come apart.
    differing = [
        pair for pair in groups[:6] if phash_distance(crop_hash[pair[0]], crop_hash[pair[1]]) > 0
    ]
    assert differing
    assert all(cluster_of[a] != cluster_of[b] for a, b in differing)
    assert (
        cluster_of[groups[-1][0]] != cluster_of[groups[-1][1]]
    )  # linked only by a close source phash
    assert (
        len({cluster_of[path] for path in groups[6]}) == 1
    )  # one source picture: always one cluster


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    rng = np.random.default_rng(3)
    rows = (
        distinct_crops("Alice", 40, rng)
        + distinct_crops("Bob", 30, rng)
        + distinct_crops("Carol", 25, rng)
    )
    outputs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_curated(tmp_path / name, rows)
        split_dataset(tmp_path / name, SplitConfig(seed=seed, holdout_characters=1))
        outputs[name] = {
            split: (tmp_path / name / layout.split_csv(split)).read_bytes()
            for split in layout.SPLIT_NAMES
        }
    assert outputs["a"] == outputs["b"]
    assert outputs["a"] != outputs["c"]


def test_adding_a_character_leaves_the_others_unchanged(tmp_path):
    rng = np.random.default_rng(4)
    rows = distinct_crops("Alice", 40, rng) + distinct_crops("Bob", 33, rng)
    write_curated(tmp_path / "before", rows)
    write_curated(tmp_path / "after", rows + distinct_crops("Aaron", 50, rng))
    for name in ("before", "after"):
        split_dataset(tmp_path / name, SplitConfig(seed=9))
    before, after = read_splits(tmp_path / "before"), read_splits(tmp_path / "after")
    for split in layout.SPLIT_NAMES:
        assert [row for row in after[split] if row["slug"] != "aaron"] == before[split]
    assert any(row["slug"] == "aaron" for row in after["val"])


def test_holdout_characters_appear_only_in_holdout(tmp_path):
    rng = np.random.default_rng(5)
    names = ["Alice", "Bob", "Carol", "Dave", "Erin"]
    write_curated(tmp_path, [row for name in names for row in distinct_crops(name, 12, rng)])
    held = set()
    for seed in range(6):
        summary = split_dataset(tmp_path, SplitConfig(holdout_characters=2, seed=seed))
        splits = read_splits(tmp_path)
        holdout_slugs = {row["slug"] for row in splits["holdout"]}
        assert len(holdout_slugs) == 2
        assert len(splits["holdout"]) == 24  # every crop of both
        for split in ("train", "val", "test"):
            assert not holdout_slugs & {row["slug"] for row in splits[split]}
        counts = {row["slug"]: row for row in summary.rows}
        assert all(
            counts[slug]["holdout"] == 12 and counts[slug]["train"] == 0 for slug in holdout_slugs
        )
        held |= holdout_slugs
    assert len(held) > 2  # the seed decides which characters are held out


def test_fractions_are_respected_on_a_larger_set(tmp_path):
    rng = np.random.default_rng(6)
    rows = []
    for name in ("Alice", "Bob", "Carol", "Dave", "Erin", "Frank"):
        index = 0
        while index < 150:  # pictures with one to three faces each
            sha, source_hash = random_sha(rng), random_hash(rng)
            for _ in range(int(rng.integers(1, 4))):
                rows.append(crop_row(name, index, sha, random_hash(rng), source_hash))
                index += 1
    write_curated(tmp_path, rows)
    summary = split_dataset(tmp_path, SplitConfig(val=0.2, test=0.1, seed=1))
    for row in summary.rows:
        total = row["train"] + row["val"] + row["test"]
        assert abs(row["val"] / total - 0.2) <= 0.03, row
        assert abs(row["test"] / total - 0.1) <= 0.03, row
        assert row["clusters"] < total  # the multi-face pictures were grouped
    assert sum(len(rows) for rows in read_splits(tmp_path).values()) == len(rows)


def test_singletons_hit_the_targets_exactly(tmp_path):
    rng = np.random.default_rng(8)
    write_curated(tmp_path, distinct_crops("Alice", 100, rng) + distinct_crops("Bob", 40, rng))
    summary = split_dataset(tmp_path, SplitConfig(val=0.2, test=0.1))
    counts = {row["slug"]: (row["train"], row["val"], row["test"]) for row in summary.rows}
    assert counts == {"alice": (70, 20, 10), "bob": (28, 8, 4)}


def test_small_classes_keep_two_training_crops_before_val_and_test(tmp_path):
    """A character needs two distinct training crops to be trained on (an anchor and its
    positive): an evaluation split whose share rounds away gets a crop only after those."""
    rng = np.random.default_rng(9)
    same_picture = random_sha(rng)
    rows = (
        distinct_crops("Four", 4, rng)
        + distinct_crops("Three", 3, rng)
        + distinct_crops("Two", 2, rng)
        + [crop_row("Grouped", i, same_picture, random_hash(rng), "") for i in range(4)]
    )
    write_curated(tmp_path, rows)
    summary = split_dataset(tmp_path, SplitConfig(val=0.15, test=0.15, min_per_character=2))
    counts = {
        row["slug"]: (row["train"], row["val"], row["test"], row["clusters"])
        for row in summary.rows
    }
    assert counts == {
        "four": (2, 1, 1, 4),
        "three": (2, 1, 0, 3),
        "two": (2, 0, 0, 2),
        "grouped": (4, 0, 0, 1),
    }
    assert summary.warnings == []


def test_a_character_left_with_one_training_crop_is_named_in_a_warning(tmp_path):
    rng = np.random.default_rng(11)
    write_curated(tmp_path, distinct_crops("Alice", 10, rng) + distinct_crops("Solo", 1, rng))
    summary = split_dataset(tmp_path, SplitConfig(min_per_character=1))
    assert [w for w in summary.warnings if w.startswith("Solo: 1 training crop(s) of 1")]
    assert not [w for w in summary.warnings if w.startswith("Alice")]


def test_characters_below_the_minimum_are_left_out_with_a_warning(tmp_path):
    rng = np.random.default_rng(10)
    write_curated(
        tmp_path,
        distinct_crops("Alice", 10, rng)
        + distinct_crops("Bob", 10, rng)
        + distinct_crops("Tiny", 2, rng),
    )
    summary = split_dataset(tmp_path, SplitConfig(min_per_character=3))
    assert len(summary.warnings) == 1 and "Tiny (tiny) has 2 curated crop(s)" in summary.warnings[0]
    assert "tiny" not in {row["slug"] for rows in read_splits(tmp_path).values() for row in rows}


def test_fewer_than_two_characters_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(12)
    write_curated(tmp_path, distinct_crops("Alice", 10, rng) + distinct_crops("Tiny", 2, rng))
    with pytest.raises(StageError, match="training needs at least 2"):
        split_dataset(tmp_path, SplitConfig(min_per_character=3))
    write_curated(tmp_path, distinct_crops("Alice", 10, rng) + distinct_crops("Bob", 10, rng))
    with pytest.raises(StageError, match="holdout_characters=1 leaves 1 of 2"):
        split_dataset(tmp_path, SplitConfig(holdout_characters=1))


def test_all_four_files_are_written_even_when_empty(tmp_path):
    rng = np.random.default_rng(13)
    write_curated(tmp_path, distinct_crops("Alice", 5, rng) + distinct_crops("Bob", 5, rng))
    split_dataset(tmp_path, SplitConfig(val=0.2, test=0.0))
    for name in layout.SPLIT_NAMES:
        assert (tmp_path / layout.split_csv(name)).is_file()
    assert (tmp_path / layout.split_csv("holdout")).read_text() == ",".join(
        layout.SPLIT_COLUMNS
    ) + "\n"
    assert read_csv(tmp_path / layout.split_csv("test")) == []


# --- the clustering against an O(n^2) reference ----------------------------------------


def reference_clusters(sources, phashes, source_phashes, max_distance) -> set[frozenset[int]]:
    def close(a: str, b: str) -> bool:
        try:
            return bin(int(a, 16) ^ int(b, 16)).count("1") <= max_distance
        except ValueError:
            return False

    def linked(i: int, j: int) -> bool:
        return (
            (sources[i] != "" and sources[i] == sources[j])
            or close(phashes[i], phashes[j])
            or close(source_phashes[i], source_phashes[j])
        )

    unvisited, clusters = set(range(len(sources))), set()
    while unvisited:
        stack, members = [unvisited.pop()], set()
        while stack:
            item = stack.pop()
            members.add(item)
            neighbours = {other for other in unvisited if linked(item, other)}
            unvisited -= neighbours
            stack.extend(neighbours)
        clusters.add(frozenset(members))
    return clusters


BASES = [0x0, 0xFFFF_FFFF_FFFF_FFFF, 0x0123_4567_89AB_CDEF, 0xF0F0_F0F0_0F0F_0F0F]


@st.composite
def hashes(draw) -> str:
    kind = draw(st.sampled_from(["near", "near", "random", "empty", "junk"]))
    if kind == "empty":
        return ""
    if kind == "junk":
        return "not-a-hash"
    if kind == "random":
        return f"{draw(st.integers(0, 2**64 - 1)):016x}"
    flips = draw(st.lists(st.integers(0, 63), max_size=10))  # a few bits away from a base
    value = draw(st.sampled_from(BASES))
    for bit in flips:
        value ^= 1 << bit
    return f"{value:016x}"


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(
        st.tuples(st.sampled_from(["", "a", "b", "c", "d"]), hashes(), hashes()), max_size=30
    ),
    max_distance=st.integers(0, 12),
)
def test_clusters_match_a_brute_force_reference(items, max_distance):
    sources = [item[0] for item in items]
    phashes = [item[1] for item in items]
    source_phashes = [item[2] for item in items]
    labels = near_duplicate_clusters(sources, phashes, source_phashes, max_distance)
    found: dict[int, set[int]] = {}
    for index, label in enumerate(labels):
        found.setdefault(label, set()).add(index)
    assert {frozenset(members) for members in found.values()} == reference_clusters(
        sources, phashes, source_phashes, max_distance
    )


def test_clustering_links_transitively():
    # a~b by phash, b~c by source, c~d by source phash: one cluster; e stays alone.
    far = [
        f"{value:016x}"
        for value in (0xAAAA_0000_0000_0000, 0x0000_AAAA_0000_0000, 0x0000_0000_AAAA_0000)
    ]
    labels = near_duplicate_clusters(
        ["s1", "s2", "s2", "s3", "s4"],
        ["0000000000000000", "0000000000000003", far[0], far[1], far[2]],
        ["", "", "ffffffffffffffff", "fffffffffffffffe", "0f0f0f0f0f0f0f0f"],
        max_distance=2,
    )
    assert labels[:4] == [labels[0]] * 4 and labels[4] != labels[0]
