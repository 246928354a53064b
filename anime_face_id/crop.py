"""The crop stage: detect faces in every raw image and cut square, margin-widened crops.

Per character, ``data/faces/<slug>/`` holds the crops (``<sha256[:16]>_<x>_<y>_<w>_<h>.png``,
named by the detected box so that a review decision stays with its face) and the index of
``crop_index``, the cache of what each source image gave. A re-run reuses every entry made
with the same settings, so adding one character to the raw data only crops that
character's images; entries and files no longer backed by the raw manifest are removed.
``write_crop_outputs`` assembles the global manifest and rejects from the indexes without
detecting anything again. The detector comes from ``faces.detectors.load_detector``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from anime_face_id import layout
from anime_face_id.config import CropConfig
from anime_face_id.crop_index import (
    CropStateError,
    character_dir,
    checked_index,
    image_count,
    index_rows,
    prune_characters,
    read_index,
    refreshed_entry,
    remove_unreferenced,
    reusable,
    save_index,
    unique_rows,
    write_table,
)
from anime_face_id.cutting import crop_image
from anime_face_id.faces.detectors import Detector, load_detector
from anime_face_id.fileio import sweep_temporaries
from anime_face_id.per_character import OnCharacter, Runner, run_in_order

Progress = Callable[[int, int], None]

# Part of every settings fingerprint: bump it when a code change alters the crops, so
# that cached results made by the old code are not reused.
CROP_ALGORITHM_VERSION = 1
# Reasons of cutting.crop_image for a detector that broke rather than found nothing.
DETECTOR_FAILURES = ("detector failed", "invalid face box")
# How often (in newly processed images) the index is saved while a character is being
# cropped, so an interrupted run resumes instead of starting that character over.
_CHECKPOINT_EVERY = 64


@dataclass
class CharacterCropResult:
    character: str
    slug: str
    images: int
    with_face: int  # images that yielded at least one face
    faces: int
    rejected: int  # images recorded in rejects.csv, "no face detected" included
    reused: int  # images whose cached result was reused
    # of the rejected: the detector raised or gave an impossible box (tried again next run)
    detector_failed: int = 0


# ---------------------------------------------------------------- inputs


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


# ---------------------------------------------------------------- one character


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
        detector_failed=sum(
            1
            for entry in entries.values()
            if str(entry.get("reason", "")).startswith(DETECTOR_FAILURES)
        ),
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
    keyed, invalid = unique_rows(rows)
    cached = read_index(directory)["images"]
    entries: dict[str, dict] = {}
    todo: list[str] = []
    for sha256, row in keyed.items():
        if reusable(cached.get(sha256), fingerprint, directory):
            entries[sha256] = refreshed_entry(cached[sha256], row)
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
                crop_image,
                root,
                directory,
                sha,
                keyed[sha],
                config,
                detector,
                fingerprint,
                cached.get(sha),
            ): sha
            for sha in todo
        }
        for finished, future in enumerate(as_completed(futures), start=1):
            sha = futures[future]
            entries[sha] = _keeping_earlier_names(future.result(), cached.get(sha))
            done += 1
            if progress:
                progress(done, total)
            if finished % _CHECKPOINT_EVERY == 0:
                # the pictures not cropped yet keep their old entries, and so their crop
                # names, should the run stop here
                unfinished = {sha: cached[sha] for sha in todo if sha in cached}
                save_index(directory, header, {**unfinished, **entries}, invalid)
    # Manifest order follows the raw manifest, not completion order.
    entries = {sha: entries[sha] for sha in keyed}
    save_index(directory, header, entries, invalid)
    remove_unreferenced(directory, entries)
    return _count(character, slug, entries, invalid, reused)


def _keeping_earlier_names(entry: dict, earlier: object) -> dict:
    """A picture that gave no crop this time (unreadable for now, a failing detector)
    keeps its earlier crops' names in its entry, so that when it gives them again they
    come back under the same names, with their review decisions."""
    if entry["faces"] or not isinstance(earlier, dict):
        return entry
    kept = earlier.get("faces") or earlier.get("earlier_faces")
    return {**entry, "earlier_faces": kept} if isinstance(kept, list) and kept else entry


# ---------------------------------------------------------------- all characters


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
        index = checked_index(root, slug, rows)
        fingerprints |= {entry["fingerprint"] for entry in index["images"].values()}
        faces, rejects = index_rows(slug, index)
        face_rows += faces
        reject_rows += rejects
    if len(fingerprints) > 1:
        raise CropStateError("characters were cropped with different settings: crop them all again")
    (root / layout.FACES_DIR).mkdir(parents=True, exist_ok=True)
    write_table(root / layout.FACES_MANIFEST, layout.FACE_COLUMNS, face_rows)
    write_table(root / layout.FACES_REJECTS, layout.FACE_REJECT_COLUMNS, reject_rows)
    prune_characters(root, set(raw))
    sweep_temporaries(root / layout.FACES_DIR)


CharacterRunner = Runner[tuple[str, list[dict]], CharacterCropResult]  # see per_character


def one_after_another(
    root: Path, config: CropConfig, progress: Progress | None = None
) -> CharacterRunner:
    """Every character in this process with one detector; ``progress`` counts images
    across all of them."""

    def run(jobs: list[tuple[str, list[dict]]]) -> Iterator[CharacterCropResult]:
        detector = load_detector(root, config)
        total = sum(image_count(rows) for _, rows in jobs)
        offset = 0
        for slug, rows in jobs:
            step = None if progress is None else _offset_progress(progress, offset, total)
            result = crop_character(root, slug, rows, config, detector, step)
            offset += result.images
            yield result

    return run


def crop_all(
    root: Path,
    config: CropConfig,
    progress: Progress | None = None,
    *,
    run_characters: CharacterRunner | None = None,
    on_character: OnCharacter | None = None,
) -> list[CharacterCropResult]:
    """The whole stage: crop every character of the raw manifest (through
    ``run_characters``), then write the stage outputs; results in slug order.
    ``on_character`` is called with (0, characters in all, None) first, then as each
    character finishes with (characters done, characters in all, its result)."""
    root = Path(root)
    jobs = sorted(raw_rows_by_character(root).items())
    run = run_characters or one_after_another(root, config, progress)
    results = run_in_order(run, jobs, lambda job: job[0], on_character)
    write_crop_outputs(root, results)
    return results


def _offset_progress(progress: Progress, offset: int, total: int) -> Progress:
    return lambda done, _character_total: progress(offset + done, total)


def summary(results: list[CharacterCropResult]) -> str:
    images = sum(r.images for r in results)
    with_face = sum(r.with_face for r in results)
    faces = sum(r.faces for r in results)
    reused = sum(r.reused for r in results)
    failed = sum(r.detector_failed for r in results)
    share = f"{with_face / images:.0%}" if images else "n/a"
    failures = f" ({failed} of them the detector failed on: see rejects.csv)" if failed else ""
    return (
        f"{len(results)} characters, {images} images: {with_face} ({share}) with at least "
        f"one face, {faces} crops, {images - with_face} rejected{failures}, {reused} reused "
        "from cache"
    )
