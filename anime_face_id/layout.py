"""Where every stage reads and writes, and the columns of every table it writes.

All paths are relative to the project root (the directory holding params.yaml and
dvc.yaml, and the working directory of every stage); paths stored inside CSVs are POSIX
paths relative to that root too, so a manifest stays valid wherever the project lives.

Values read back from those tables (paths, slugs, sha256 digests) are joined into paths,
and a table can be edited by hand or damaged, so every such value goes through the checks
at the end of this module before it is used: ``project_path``, ``require_slug``,
``require_sha256``, and ``read_table`` / ``check_rows`` to name the table, line and column
of a bad one.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from anime_face_id.errors import BadRow, BadTable, StageError, utf8_problem
from anime_face_id.fileio import read_csv
from anime_face_id.slugs import is_safe_slug

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
# Written after RAW_COLUMNS when a backend knows them (booru: the post), empty otherwise;
# readers do not require them, so manifests from before them stay readable.
RAW_SOURCE_COLUMNS = ("post_id", "post_artist", "post_tags")
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
NO_FACE = "no face detected"  # the reason of a picture the detector found no face in

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

MODELS = Path("models")
EMBEDDER = MODELS / "embedder.pt"  # written by train; read by evaluate, package, identify, review

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


# ---------------------------------------------------------------- values from tables


class UnsafeValue(ValueError):
    """A value from a table that must not become part of a path; the message says why."""


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def cell_int(text: str | None) -> int:
    """A table's number cell (a picture's width or height), 0 when empty or not a number."""
    try:
        return int(text or 0)
    except ValueError:
        return 0


def require_sha256(value: object) -> str:
    """``value`` if it is a sha256 digest (64 hex digits): a digest names files."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise UnsafeValue(f"{value!r} is not a sha256 digest (64 hex digits)")
    return value


def require_slug(value: object) -> str:
    """``value`` if it is a slug as anime_face_id.slugs makes them: slugs name folders."""
    if not isinstance(value, str) or not is_safe_slug(value):
        raise UnsafeValue(
            f"{value!r} is not a slug (lower-case letters and digits joined by single '_')"
        )
    return value


def character_dir(root: Path, stage_dir: Path, slug: str) -> Path:
    """``<root>/<stage_dir>/<slug>``, a character's folder in a stage's data (e.g. RAW_DIR,
    FACES_DIR); a slug that could name anything else is refused (ValueError)."""
    if not is_safe_slug(slug):
        raise ValueError(f"unsafe slug {slug!r}")
    return Path(root) / stage_dir / slug


def require_relative(value: object) -> str:
    """``value`` if it is a POSIX path relative to the project root without '..': checks
    the text only (``project_path`` also follows symbolic links)."""
    if not isinstance(value, str) or not value.strip():
        raise UnsafeValue("the path is empty")
    if "\\" in value or "\0" in value:
        raise UnsafeValue(f"path {value!r} must be a POSIX path (no backslash or NUL)")
    pure = PurePosixPath(value)
    if pure.is_absolute():
        raise UnsafeValue(f"path {value!r} is absolute: it points outside the project")
    if ".." in pure.parts:
        raise UnsafeValue(f"path {value!r} contains '..', which can lead outside the project")
    return value


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def project_path(root: str | Path, relative: object, within: Path = DATA) -> Path:
    """``root / relative`` once ``relative`` is known to stay in the project.

    Beyond the text checks of ``require_relative``, the path must name something under
    ``within`` (a folder of the layout, data/ by default), and once symbolic links are
    resolved it must still lie inside the project or inside ``within`` (a data folder
    that is itself a link to another disk is fine; a link that leads elsewhere is not).
    """
    text = require_relative(relative)
    root = Path(root)
    if not _inside(PurePosixPath(text), PurePosixPath(within.as_posix())):
        raise UnsafeValue(f"path {text!r} is not under {within.as_posix()}/")
    target = (root / text).resolve()
    if not (_inside(target, root.resolve()) or _inside(target, (root / within).resolve())):
        raise UnsafeValue(f"path {text!r} leads outside the project through a symbolic link")
    return root / text


def screen_rows(
    table: str | Path,
    rows: Iterable[Mapping[str, str]],
    checks: Mapping[str, Callable[[str], object]],
) -> tuple[list[dict[str, str]], list[BadRow]]:
    """Split the rows of a table read by ``read_table`` into those whose values pass
    ``checks`` (column -> check raising UnsafeValue) and a BadRow for each other one,
    naming its line and column. For stages that record bad rows and go on."""
    good: list[dict[str, str]] = []
    bad: list[BadRow] = []
    for index, row in enumerate(rows):
        problem = _row_problem(table, index, row, checks)
        if problem is None:
            good.append(dict(row))
        else:
            bad.append(problem)
    return good, bad


def check_rows(
    table: str | Path,
    rows: Iterable[Mapping[str, str]],
    checks: Mapping[str, Callable[[str], object]],
) -> None:
    """Like ``screen_rows``, for stages that stop: the first bad row is raised."""
    for index, row in enumerate(rows):
        problem = _row_problem(table, index, row, checks)
        if problem is not None:
            raise problem


def _row_problem(
    table: str | Path,
    index: int,
    row: Mapping[str, str],
    checks: Mapping[str, Callable[[str], object]],
) -> BadRow | None:
    for column, check in checks.items():
        try:
            check(row.get(column))  # type: ignore[arg-type]
        except UnsafeValue as error:
            # Line numbers as an editor shows them: the header is line 1.
            return BadRow(posix(table), index + 2, column, str(error))
    return None


def read_table(
    root: str | Path, relative: Path, columns: Sequence[str], produced_by: str | None = None
) -> list[dict[str, str]]:
    """Rows of the table at ``relative`` (a path of this layout).

    A missing table is a StageError naming the stage to run first, or no rows when
    ``produced_by`` is None (an optional table). A table that cannot be read (not UTF-8,
    a column missing from its header) is a BadTable naming it."""
    path = Path(root) / relative
    if not path.is_file():
        if produced_by is None:
            return []
        raise StageError(f"{posix(relative)} not found: run the {produced_by} stage first")
    try:
        return read_csv(path, columns)
    except UnicodeDecodeError as error:
        where = utf8_problem(path.read_bytes()) or error.reason
        raise BadTable(f"{posix(relative)} is not UTF-8 text: {where}") from None
    except (ValueError, csv.Error) as error:
        reason = str(error).removeprefix(f"{path}: ")
        raise BadTable(f"{posix(relative)}: {reason}") from None
