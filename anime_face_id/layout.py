"""Where every stage reads and writes, and the columns of every table it writes.

All paths are relative to the project root (the directory holding params.yaml and
dvc.yaml, and the working directory of every stage); paths stored inside CSVs are POSIX
paths relative to that root too, so a manifest stays valid wherever the project lives.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path("data")

RAW_DIR = DATA / "raw"
RAW_MANIFEST = RAW_DIR / "manifest.csv"
RAW_REJECTS = RAW_DIR / "rejects.csv"
RAW_COLUMNS = (
    "character",
    "slug",
    "path",
    "url",
    "sha256",
    "phash",
    "width",
    "height",
    "format",
    "backend",
    "query",
    "fetched_at",
)
RAW_REJECT_COLUMNS = ("character", "slug", "url_or_path", "reason", "backend", "time")

FACES_DIR = DATA / "faces"
FACES_MANIFEST = FACES_DIR / "manifest.csv"
FACES_REJECTS = FACES_DIR / "rejects.csv"
FACE_COLUMNS = (
    "character",
    "slug",
    "path",
    "source",
    "source_sha256",
    "x",
    "y",
    "w",
    "h",
    "crop_x",
    "crop_y",
    "crop_side",
    "detector",
    "score",
    "phash",
    "source_phash",
)
FACE_REJECT_COLUMNS = ("character", "slug", "source", "reason")

REVIEW_DIR = DATA / "review"
DECISIONS = REVIEW_DIR / "decisions.csv"
# decision: accept | reject | relabel (character = the new name) | box (path is a raw
# image, box = "x,y,w,h" in its pixels, character = who it is; default the raw image's)
DECISION_COLUMNS = ("time", "path", "decision", "character", "box", "note")
DECISIONS_KINDS = ("accept", "reject", "relabel", "box")

CURATED_DIR = DATA / "curated"
CURATED_MANIFEST = CURATED_DIR / "manifest.csv"
CURATED_COLUMNS = (
    "character",
    "slug",
    "path",
    "source",
    "source_sha256",
    "phash",
    "source_phash",
    "origin",
    "status",
)

SPLITS_DIR = DATA / "splits"
SPLIT_NAMES = ("train", "val", "test", "holdout")
SPLIT_COLUMNS = ("character", "slug", "path", "source", "cluster")


def split_csv(name: str) -> Path:
    return SPLITS_DIR / f"{name}.csv"


BALANCED_DIR = DATA / "balanced"
BALANCED_TRAIN = BALANCED_DIR / "train.csv"
BALANCED_COLUMNS = ("character", "slug", "path", "repeat", "augment")


def posix(path: Path | str) -> str:
    return Path(path).as_posix()
