"""Values read back from the stage tables (paths, slugs, sha256) never lead a read or a
write out of the project: one set of checks (anime_face_id.layout), used by every stage
that turns table values into paths, and bad rows named by table, line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from anime_face_id import layout
from anime_face_id.balance import balance_train
from anime_face_id.config import BalanceConfig, SplitConfig
from anime_face_id.dataset import read_balanced_train, read_split
from anime_face_id.errors import BadRow, BadTable, StageError
from anime_face_id.fileio import write_csv
from anime_face_id.layout import UnsafeValue, project_path, require_sha256, require_slug
from anime_face_id.split import split_dataset

SHA = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "path, reason",
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("../x.png", "'..'"),
        ("data/../../x.png", "'..'"),
        ("data/faces/../../../x.png", "'..'"),
        ("data\\faces\\a.png", "POSIX"),
        ("params.yaml", "not under data/"),
        ("data/raw/a.png", "not under data/faces/"),
    ],
)
def test_project_path_refuses_paths_that_can_leave_their_folder(tmp_path, path, reason):
    within = layout.FACES_DIR if "raw" in path else layout.DATA
    with pytest.raises(UnsafeValue, match=reason):
        project_path(tmp_path, path, within)


def test_project_path_follows_links(tmp_path, tmp_path_factory):
    root = tmp_path / "project"
    (root / "data/faces/a").mkdir(parents=True)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (root / "data/faces/a/out.png").symlink_to(elsewhere / "secret.png")
    (root / "data/faces/b").symlink_to(elsewhere, target_is_directory=True)
    for path in ("data/faces/a/out.png", "data/faces/b/x.png"):
        with pytest.raises(UnsafeValue, match="outside the project through a symbolic link"):
            project_path(root, path)
    # Links that stay in the project (DVC's symlink cache) are fine ...
    (root / ".dvc/cache").mkdir(parents=True)
    (root / "data/faces/a/cached.png").symlink_to(root / ".dvc/cache/ab12")
    assert project_path(root, "data/faces/a/cached.png") == root / "data/faces/a/cached.png"


def test_a_data_folder_on_another_disk_is_fine(tmp_path, tmp_path_factory):
    disk = tmp_path_factory.mktemp("big-disk")
    (disk / "faces").mkdir()
    (tmp_path / "data").symlink_to(disk, target_is_directory=True)
    assert project_path(tmp_path, "data/faces/a.png") == tmp_path / "data/faces/a.png"


def test_sha256_and_slug_checks():
    assert require_sha256(SHA) == SHA and require_sha256(SHA.upper()) == SHA.upper()
    for bad in ("../../../../x", SHA[:-1], SHA + "0", "g" * 64, "", None):
        with pytest.raises(UnsafeValue, match="not a sha256"):
            require_sha256(bad)
    assert require_slug("kuroko_tetsuya_2") == "kuroko_tetsuya_2"
    for bad in ("..", "a/b", "A", "_a", "a__b", "", None):
        with pytest.raises(UnsafeValue, match="not a slug"):
            require_slug(bad)


def curated_row(slug: str, index: int, path: str | None = None) -> dict:
    return {
        "character": slug.title(),
        "slug": slug,
        "path": path or f"data/faces/{slug}/{index}.png",
        "source": f"data/raw/{slug}/{index}.png",
        "source_sha256": SHA,
        "phash": f"{index:016x}",
        "source_phash": "",
        "origin": "detector",
        "status": "accepted",
    }


def curated(root: Path, bad: dict) -> None:
    rows = [curated_row(slug, i) for slug in ("alice", "bob") for i in range(4)]
    rows[5] = {**rows[5], **bad}  # line 7 of the file
    write_csv(root / layout.CURATED_MANIFEST, layout.CURATED_COLUMNS, rows)


@pytest.mark.parametrize(
    "bad, column",
    [
        ({"slug": "../../etc"}, "slug"),
        ({"path": "/etc/passwd"}, "path"),
        ({"path": "a.png"}, "path"),
    ],
)
def test_split_refuses_a_curated_row_that_leads_out_of_data(tmp_path, bad, column):
    curated(tmp_path, bad)
    with pytest.raises(BadRow, match=f"data/curated/manifest.csv line 7, column {column}: "):
        split_dataset(tmp_path, SplitConfig())
    assert not (tmp_path / layout.SPLITS_DIR).exists()


def test_split_says_which_table_has_a_bad_header(tmp_path):
    (tmp_path / layout.CURATED_MANIFEST).parent.mkdir(parents=True)
    (tmp_path / layout.CURATED_MANIFEST).write_text("character,slug\n", encoding="utf-8")
    with pytest.raises(StageError, match=r"data/curated/manifest.csv: missing column\(s\) path"):
        split_dataset(tmp_path, SplitConfig())


def split_rows(bad: dict) -> list[dict]:
    rows = [
        {
            "character": slug.title(),
            "slug": slug,
            "path": f"data/faces/{slug}/{i}.png",
            "source": f"data/raw/{slug}/{i}.png",
            "cluster": f"{slug}:{i}",
        }
        for slug in ("alice", "bob")
        for i in range(3)
    ]
    rows[2] = {**rows[2], **bad}  # line 4 of the file
    return rows


@pytest.mark.parametrize(
    "bad, column", [({"slug": "a/../b"}, "slug"), ({"path": "data/../../x.png"}, "path")]
)
def test_balance_refuses_a_train_row_that_leads_out_of_data(tmp_path, bad, column):
    write_csv(tmp_path / layout.split_csv("train"), layout.SPLIT_COLUMNS, split_rows(bad))
    with pytest.raises(BadRow, match=f"data/splits/train.csv line 4, column {column}: "):
        balance_train(tmp_path, BalanceConfig())
    assert not (tmp_path / layout.BALANCED_TRAIN).exists()


def test_training_tables_refuse_paths_through_links_out_of_the_project(tmp_path, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (tmp_path / "data/faces").mkdir(parents=True)
    (tmp_path / "data/faces/alice").symlink_to(elsewhere, target_is_directory=True)
    write_csv(tmp_path / layout.split_csv("val"), layout.SPLIT_COLUMNS, split_rows({}))
    with pytest.raises(StageError, match=r"data/splits/val\.csv line 2, column path: .*symbolic"):
        read_split(tmp_path, "val")
    (tmp_path / "data/faces/alice").unlink()
    rows = [{**row, "repeat": 0, "augment": 0} for row in split_rows({"path": "/etc/passwd"})]
    write_csv(tmp_path / layout.BALANCED_TRAIN, layout.BALANCED_COLUMNS, rows)
    with pytest.raises(StageError, match=r"data/balanced/train\.csv line 4, column path: "):
        read_balanced_train(tmp_path)


def test_bad_tables_are_stage_errors_and_value_errors():
    # Stage runners print StageErrors without a traceback; the review app catches ValueError.
    assert issubclass(BadTable, StageError) and issubclass(BadTable, ValueError)
    assert issubclass(BadRow, BadTable)
    error = BadRow("data/raw/manifest.csv", 3, "sha256", "'x' is not a sha256")
    assert str(error) == "data/raw/manifest.csv line 3, column sha256: 'x' is not a sha256"


def test_hand_edited_tables_with_a_byte_order_mark_or_a_short_row_read(tmp_path):
    curated(tmp_path, {})
    table = tmp_path / layout.CURATED_MANIFEST
    header, first, *rest = table.read_text(encoding="utf-8").splitlines()
    short = ",".join(first.split(",")[:2])  # the row cut after its slug
    table.write_bytes(("\ufeff" + "\r\n".join([header, first, short, *rest]) + "\r\n").encode())
    read = layout.read_table(tmp_path, layout.CURATED_MANIFEST, ("character", "path"))
    assert read[0]["character"] == first.split(",")[0]  # the header's first name is found
    assert read[1]["path"] == "" and None not in read[1].values()
    with pytest.raises(BadRow, match="line 3, column path: the path is empty"):
        split_dataset(tmp_path, SplitConfig())


def test_split_counts_a_repeated_crop_once_and_refuses_one_crop_under_two_characters(tmp_path):
    curated(tmp_path, {})
    table = tmp_path / layout.CURATED_MANIFEST
    lines = table.read_text(encoding="utf-8").splitlines()
    respelled = lines[1].replace("data/faces/alice/", "data/faces/alice/./", 1)  # same file
    table.write_text("\n".join([*lines, lines[1], respelled]) + "\n", encoding="utf-8")
    summary = split_dataset(tmp_path, SplitConfig(min_per_character=2, holdout_characters=0))
    written = [
        row["path"]
        for name in layout.SPLIT_NAMES
        for row in layout.read_table(tmp_path, layout.split_csv(name), ("path",))
    ]
    assert sorted(written) == sorted(set(written)) and len(written) == 8
    assert sum("listed again (first on line 2)" in warning for warning in summary.warnings) == 2
    moved = lines[1].replace("Alice,alice,", "Bob,bob,", 1)
    table.write_text("\n".join([*lines, moved]) + "\n", encoding="utf-8")
    with pytest.raises(BadRow, match=r"line 10, column slug: .* as 'alice' on line 2 and as 'bob'"):
        split_dataset(tmp_path, SplitConfig(min_per_character=2, holdout_characters=0))
