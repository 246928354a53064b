"""The crop stage: detect faces in every raw image and cut square, margin-widened crops.

Per character, ``data/faces/<slug>/`` holds the crops (``<sha256[:16]>_<i>.png``) and an
``_index.json`` that maps each source image's sha256 to the settings fingerprint it was
processed with and what came out (faces, or the reason there were none). A re-run reuses
every entry whose fingerprint matches and whose crop files exist, so adding one character
to the raw data only crops that character's images; entries and files no longer backed by
the raw manifest are removed. ``write_crop_outputs`` assembles the global manifest and
rejects from the indexes without detecting anything again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from anime_face_id import layout
from anime_face_id.config import CropConfig
from anime_face_id.faces.boxes import crop_square, square_crop_box
from anime_face_id.faces.cascade import resolve_cascade
from anime_face_id.faces.detectors import (
    PACKAGED_WEIGHTS,
    CenterNetDetector,
    Detector,
    LbpCascadeDetector,
    WholeImageDetector,
)
from anime_face_id.fileio import atomic_write_bytes, csv_text, sweep_temporaries
from anime_face_id.imaging import ImageRejected, decode, phash
from anime_face_id.slugs import is_safe_slug

Progress = Callable[[int, int], None]

INDEX_NAME = "_index.json"
INDEX_VERSION = 1
# Part of every settings fingerprint: bump it when a code change alters the crops, so
# that cached results made by the old code are not reused.
CROP_ALGORITHM_VERSION = 1
NO_FACE = layout.NO_FACE
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CROP_FILE = re.compile(r"[0-9a-f]{16}_\d+\.png")
# How often (in newly processed images) the index is saved while a character is being
# cropped, so an interrupted run resumes instead of starting that character over.
_CHECKPOINT_EVERY = 64


class CropStateError(RuntimeError):
    """The per-character crop state does not match the raw data it should describe."""


@dataclass
class CharacterCropResult:
    character: str
    slug: str
    images: int
    with_face: int  # images that yielded at least one face
    faces: int
    rejected: int  # images recorded in rejects.csv, "no face detected" included
    reused: int  # images whose cached result was reused


# ---------------------------------------------------------------- inputs


def load_detector(root: Path, config: CropConfig) -> Detector:
    """The configured detector; for ``lbp`` this may download and verify the cascade."""
    if config.detector == "none":
        return WholeImageDetector()
    if config.detector == "centernet":
        weights = detector_weights_path(root, config)
        return CenterNetDetector(weights, config.input_size, config.min_score, config.nms_iou)
    cascade = resolve_cascade(Path(root), config.cascade)
    return LbpCascadeDetector(cascade, config.scale_factor, config.min_neighbors, config.min_size)


@functools.lru_cache(maxsize=4)
def process_detector(root: Path, config: CropConfig) -> Detector:
    """``load_detector`` once per process and settings: the crop flow's process, or each
    Dask worker's (a detector is loaded where it runs, never sent over the network; the
    cascade's OpenCV object could not be)."""
    return load_detector(Path(root), config)


def detector_weights_path(root: Path, config: CropConfig) -> Path:
    """The CenterNet weights: ``crop.detector_weights`` (relative to the project root), or
    the file shipped in the package."""
    if config.detector_weights:
        return Path(root) / config.detector_weights
    return PACKAGED_WEIGHTS


def raw_rows_by_character(root: Path) -> dict[str, list[dict]]:
    """Raw manifest rows grouped by slug, in manifest order.

    A missing manifest or one with wrong headers is a StageError (one clear line, no
    traceback). Slugs become directory names: a manifest holding anything else was not
    written by collect and must not steer where files are written or deleted, so its first
    unsafe slug stops the stage, naming the line.
    """
    rows = layout.read_table(root, layout.RAW_MANIFEST, layout.RAW_COLUMNS, "collect")
    layout.check_rows(layout.RAW_MANIFEST, rows, {"slug": layout.require_slug})
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["slug"], []).append(row)
    return grouped


def settings_fingerprint(config: CropConfig, detector: Detector) -> str:
    """Everything that changes the crops of an image, hashed; workers are not part of it."""
    settings = {
        "algorithm": CROP_ALGORITHM_VERSION,
        "detector": dict(detector.settings),
        "margin": config.margin,
        "size": config.size,
        "max_pixels": config.max_pixels,
    }
    encoded = json.dumps(settings, sort_keys=True).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()[:16]


def _worker_count(config: CropConfig) -> int:
    return config.workers or os.cpu_count() or 1


# ---------------------------------------------------------------- per-character index


def character_dir(root: Path, slug: str) -> Path:
    if not is_safe_slug(slug):
        raise ValueError(f"unsafe slug {slug!r}")
    return Path(root) / layout.FACES_DIR / slug


def read_index(directory: Path) -> dict:
    """The saved index, or an empty one when it is missing, unreadable or outdated
    (everything is then simply cropped again)."""
    try:
        index = json.loads((directory / INDEX_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"images": {}}
    if not isinstance(index, dict) or index.get("version") != INDEX_VERSION:
        return {"images": {}}
    if not isinstance(index.get("images"), dict):
        return {"images": {}}
    return index


def _write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write that leaves an identical file untouched (mtime included), so an
    unchanged re-run changes nothing on disk."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(path, data)


def _save_index(directory: Path, header: dict, images: dict, invalid: list) -> None:
    index = {
        **header,
        "version": INDEX_VERSION,
        "images": images,
        "invalid": invalid,
    }
    text = json.dumps(index, indent=1, sort_keys=True) + "\n"
    _write_if_changed(directory / INDEX_NAME, text.encode("utf-8"))


def _reusable(entry: object, fingerprint: str, directory: Path) -> bool:
    if not isinstance(entry, dict) or entry.get("fingerprint") != fingerprint:
        return False
    if not entry.get("cacheable", False):
        return False
    faces = entry.get("faces")
    if not isinstance(faces, list):
        return False
    return all(
        isinstance(face, dict)
        and _CROP_FILE.fullmatch(str(face.get("file", "")))
        and (directory / face["file"]).is_file()
        for face in faces
    )


# ---------------------------------------------------------------- one image


def _entry(row: dict, fingerprint: str) -> dict:
    return {
        "fingerprint": fingerprint,
        "character": row["character"],
        "source": row["path"],
        "source_phash": row.get("phash", ""),
        "faces": [],
        "reason": None,
        "cacheable": True,
    }


def _refresh_metadata(entry: dict, row: dict) -> dict:
    """A reused entry takes the current row's descriptive fields (no pixels involved)."""
    return {
        **entry,
        "character": row["character"],
        "source": row["path"],
        "source_phash": row.get("phash", ""),
    }


def _rejected(entry: dict, reason: str, cacheable: bool = True) -> dict:
    # Unreadable files may be a transient problem (a mount, a sync in progress), so they are
    # tried again next run; decoding and detection outcomes are properties of the bytes.
    return {**entry, "faces": [], "reason": reason, "cacheable": cacheable}


def _source_path(root: Path, relative: str) -> Path | None:
    """The raw file inside the project root, or None for a path that would leave it."""
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or ".." in pure.parts:
        return None
    return Path(root) / pure


def _png(crop: np.ndarray) -> tuple[bytes, str]:
    image = Image.fromarray(crop, "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), phash(image)


def _cut_faces(
    rgb: np.ndarray, detections: list, sha256: str, directory: Path, config: CropConfig
) -> list[dict]:
    height, width = rgb.shape[:2]
    faces = []
    for number, detection in enumerate(detections):
        x, y, side = square_crop_box(detection.box, width, height, config.margin)
        data, crop_phash = _png(crop_square(rgb, x, y, side, config.size))
        name = f"{sha256[:16]}_{number}.png"
        _write_if_changed(directory / name, data)
        faces.append(
            {
                "file": name,
                "x": detection.x,
                "y": detection.y,
                "w": detection.w,
                "h": detection.h,
                "crop_x": x,
                "crop_y": y,
                "crop_side": side,
                "score": detection.score,
                "phash": crop_phash,
            }
        )
    return faces


def crop_image(
    root: Path,
    directory: Path,
    sha256: str,
    row: dict,
    config: CropConfig,
    detector: Detector,
    fingerprint: str,
) -> dict:
    """Detect and crop one raw image; every failure becomes the entry's ``reason``."""
    entry = _entry(row, fingerprint)
    path = _source_path(root, row["path"])
    if path is None:
        return _rejected(entry, f"source path {row['path']!r} is not inside the project")
    try:
        data = path.read_bytes()
    except OSError as error:
        return _rejected(entry, f"cannot read file: {error.strerror or error}", cacheable=False)
    try:
        image, _format = decode(data, config.max_pixels, config.max_decode_mb * 2**20)
    except ImageRejected as error:
        return _rejected(entry, error.reason)
    rgb = np.asarray(image)
    try:
        detections = detector.detect(rgb)
    except Exception as error:  # one image must never stop the stage
        return _rejected(entry, f"detector failed: {error}", cacheable=False)
    if not detections:
        return _rejected(entry, NO_FACE)
    try:
        faces = _cut_faces(rgb, detections, sha256, directory, config)
    except ValueError as error:  # a detector returned a box outside the image
        return _rejected(entry, f"invalid face box: {error}", cacheable=False)
    return {**entry, "faces": faces}


# ---------------------------------------------------------------- one character


def _unique_rows(rows: Iterable[dict]) -> tuple[dict[str, dict], list[dict]]:
    """Rows keyed by sha256 (first one wins for duplicates), and rows whose sha256 is not
    a sha256 (they cannot be named or cached, so they are rejected)."""
    keyed: dict[str, dict] = {}
    invalid: list[dict] = []
    for row in rows:
        sha256 = row.get("sha256", "").lower()
        if not _SHA256.fullmatch(sha256):
            invalid.append(
                {
                    "character": row["character"],
                    "source": row["path"],
                    "reason": f"invalid sha256 in the raw manifest: {row.get('sha256', '')!r}",
                }
            )
        else:
            keyed.setdefault(sha256, row)
    return keyed, invalid


def image_count(rows: Iterable[dict]) -> int:
    """How many images ``crop_character`` counts for ``rows`` (duplicates once)."""
    keyed, invalid = _unique_rows(rows)
    return len(keyed) + len(invalid)


def _remove_unreferenced(directory: Path, entries: dict) -> None:
    referenced = {face["file"] for entry in entries.values() for face in entry["faces"]}
    sweep_temporaries(directory)
    for path in directory.iterdir():
        if path.is_file() and _CROP_FILE.fullmatch(path.name) and path.name not in referenced:
            path.unlink(missing_ok=True)


def _count(
    character: str, slug: str, entries: dict, invalid: list, reused: int
) -> CharacterCropResult:
    with_face = sum(1 for entry in entries.values() if entry["faces"])
    return CharacterCropResult(
        character=character,
        slug=slug,
        images=len(entries) + len(invalid),
        with_face=with_face,
        faces=sum(len(entry["faces"]) for entry in entries.values()),
        rejected=len(entries) - with_face + len(invalid),
        reused=reused,
    )


@contextlib.contextmanager
def _one_thread_per_image() -> Iterator[None]:
    """Images are cropped in parallel, one per pool thread. torch's own threads on top only
    oversubscribe the cores, and make a detector's scores depend on how many the process
    may use (in their last digits): a crop made on a one-thread Dask worker would differ
    from one made here. So inference runs on one thread per image, here and there."""
    torch = sys.modules.get("torch")  # the cascade and `none` need no torch
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def crop_character(
    root: Path,
    slug: str,
    rows: list[dict],
    config: CropConfig,
    detector: Detector,
    progress: Progress | None = None,
) -> CharacterCropResult:
    """Crop one character's raw images, reusing every result cached with the same settings.

    Leaves ``data/faces/<slug>/`` holding exactly the crops of ``rows`` and an index that
    ``write_crop_outputs`` reads.
    """
    root = Path(root)
    directory = character_dir(root, slug)
    directory.mkdir(parents=True, exist_ok=True)
    character = rows[0]["character"] if rows else slug
    fingerprint = settings_fingerprint(config, detector)
    header = {"character": character, "slug": slug, "detector": detector.name}
    keyed, invalid = _unique_rows(rows)
    cached = read_index(directory)["images"]
    entries: dict[str, dict] = {}
    todo: list[str] = []
    for sha256, row in keyed.items():
        if _reusable(cached.get(sha256), fingerprint, directory):
            entries[sha256] = _refresh_metadata(cached[sha256], row)
        else:
            todo.append(sha256)
    reused = len(entries)
    total = len(keyed) + len(invalid)
    done = reused + len(invalid)
    if progress:
        progress(done, total)
    with _one_thread_per_image(), ThreadPoolExecutor(max_workers=_worker_count(config)) as pool:
        futures = {
            pool.submit(
                crop_image, root, directory, sha, keyed[sha], config, detector, fingerprint
            ): sha
            for sha in todo
        }
        for finished, future in enumerate(as_completed(futures), start=1):
            entries[futures[future]] = future.result()
            done += 1
            if progress:
                progress(done, total)
            if finished % _CHECKPOINT_EVERY == 0:
                _save_index(directory, header, entries, invalid)
    # Manifest order follows the raw manifest, not completion order.
    entries = {sha: entries[sha] for sha in keyed}
    _save_index(directory, header, entries, invalid)
    _remove_unreferenced(directory, entries)
    return _count(character, slug, entries, invalid, reused)


# ---------------------------------------------------------------- all characters


# Face fields stored in the index under the same names as their manifest columns.
_FACE_FIELDS = ("x", "y", "w", "h", "crop_x", "crop_y", "crop_side", "score", "phash")


def _index_rows(slug: str, index: dict) -> tuple[list[dict], list[dict]]:
    """Manifest and reject rows for one character's index."""
    faces, rejects = [], []
    for sha256, entry in index["images"].items():
        base = {"character": entry["character"], "slug": slug, "source": entry["source"]}
        if entry["reason"] is not None:
            rejects.append({**base, "reason": entry["reason"]})
        for face in entry["faces"]:
            row = {**base, **{key: face[key] for key in _FACE_FIELDS}}
            row["path"] = layout.posix(layout.FACES_DIR / slug / face["file"])
            row["source_sha256"] = sha256
            row["detector"] = index.get("detector", "")
            row["source_phash"] = entry["source_phash"]
            faces.append(row)
    rejects.extend({**item, "slug": slug} for item in index.get("invalid", []))
    return faces, rejects


def _checked_index(root: Path, slug: str, rows: list[dict]) -> dict:
    """The slug's index, after checking it describes exactly the current raw rows."""
    index = read_index(character_dir(root, slug))
    keyed, invalid = _unique_rows(rows)
    where = layout.posix(layout.FACES_DIR / slug / INDEX_NAME)
    if set(index["images"]) != set(keyed) or len(index.get("invalid", [])) != len(invalid):
        raise CropStateError(
            f"{where} does not match the raw manifest for {slug!r}: run crop_character for it"
        )
    fingerprints = {entry.get("fingerprint") for entry in index["images"].values()}
    if len(fingerprints) > 1:
        raise CropStateError(f"{where} mixes crop settings: run crop_character for {slug!r}")
    return index


def _prune_characters(root: Path, keep: set[str]) -> None:
    """Remove the crop directories of characters no longer in the raw data; only
    directories this stage made (they hold an index) or empty ones are touched."""
    faces_dir = Path(root) / layout.FACES_DIR
    for path in faces_dir.iterdir():
        if not path.is_dir() or path.is_symlink() or path.name in keep:
            continue
        if (path / INDEX_NAME).is_file() or not any(path.iterdir()):
            shutil.rmtree(path)


def write_crop_outputs(root: Path, results: list[CharacterCropResult]) -> None:
    """Write data/faces/manifest.csv and rejects.csv for every character in the raw
    manifest from the per-character indexes, and remove the crops of characters that are
    gone. ``results`` must cover every character in the raw manifest (run
    ``crop_character`` for each, which is cheap when nothing changed)."""
    root = Path(root)
    raw = raw_rows_by_character(root)
    missing = sorted(set(raw) - {result.slug for result in results})
    if missing:
        raise CropStateError(
            f"no crop result for {len(missing)} character(s): {', '.join(missing)}"
        )
    face_rows: list[dict] = []
    reject_rows: list[dict] = []
    fingerprints: set[str] = set()
    for slug, rows in raw.items():
        index = _checked_index(root, slug, rows)
        fingerprints |= {entry["fingerprint"] for entry in index["images"].values()}
        faces, rejects = _index_rows(slug, index)
        face_rows += faces
        reject_rows += rejects
    if len(fingerprints) > 1:
        raise CropStateError("characters were cropped with different settings: crop them all again")
    (root / layout.FACES_DIR).mkdir(parents=True, exist_ok=True)
    _write_table(root / layout.FACES_MANIFEST, layout.FACE_COLUMNS, face_rows)
    _write_table(root / layout.FACES_REJECTS, layout.FACE_REJECT_COLUMNS, reject_rows)
    _prune_characters(root, set(raw))
    sweep_temporaries(root / layout.FACES_DIR)


def _write_table(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    _write_if_changed(path, csv_text(columns, rows).encode("utf-8"))


def crop_all(
    root: Path, config: CropConfig, progress: Progress | None = None
) -> list[CharacterCropResult]:
    """The whole stage, sequentially by character (the Prefect flow fans characters out)."""
    root = Path(root)
    detector = load_detector(root, config)
    raw = raw_rows_by_character(root)
    total = sum(image_count(rows) for rows in raw.values())
    results = []
    offset = 0
    for slug, rows in raw.items():
        step = None if progress is None else _offset_progress(progress, offset, total)
        results.append(crop_character(root, slug, rows, config, detector, step))
        offset += results[-1].images
    write_crop_outputs(root, results)
    return results


def _offset_progress(progress: Progress, offset: int, total: int) -> Progress:
    return lambda done, _character_total: progress(offset + done, total)


def summary(results: list[CharacterCropResult]) -> str:
    images = sum(r.images for r in results)
    with_face = sum(r.with_face for r in results)
    faces = sum(r.faces for r in results)
    reused = sum(r.reused for r in results)
    share = f"{with_face / images:.0%}" if images else "n/a"
    return (
        f"{len(results)} characters, {images} images: {with_face} ({share}) with at least "
        f"one face, {faces} crops, {images - with_face} rejected, {reused} reused from cache"
    )
