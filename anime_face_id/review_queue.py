"""What the review app shows, in what order, and the decisions it records.

Importable and testable without Streamlit: apps/review.py only lays this out on a page.
The state is read afresh from the manifests and the decisions log on every call, so what
a reviewer sees survives an app restart and includes what another tab decided. The only
file written is the decisions log, through ``append_decisions`` (one locked, fsynced
append per click): images and manifests are never touched.

A crop's status is the review stage's reading of the log, by the same function
(``decisions.crop_status``): the latest row per path wins; a relabel to the crop's own
character is an accept, and a relabel to a character that is not in params.yaml leaves the
crop pending.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from anime_face_id import layout
from anime_face_id.config import Params
from anime_face_id.decisions import (
    Box,
    Decisions,
    append_decisions,
    crop_status,
    read_decisions,
    unique_paths,
)
from anime_face_id.faces.boxes import check_box_inside, crop_square, square_crop_box
from anime_face_id.imaging import load_rgb
from anime_face_id.suspicion import Embeddings, cross_character_duplicates, distances_by_path

NOTE = "review app"
STATUSES = ("pending", "accepted", "rejected", "relabelled")
FILTERS = ("all", *STATUSES)
THUMBNAIL_SIDE = 160
PREVIEW_MAX_SIDE = 900
COLOURS = {"detected": (255, 196, 0), "manual": (0, 200, 83), "proposed": (230, 0, 60)}


class FacesNotReady(Exception):
    """There are no face crops to review yet; the message says what to run."""


@dataclass(frozen=True)
class Crop:
    path: str
    character: str  # as the crop stage filed it
    source: str  # the raw image it was cut from
    phash: str
    status: str  # one of STATUSES
    target: str  # the character it counts for now: the relabel target, else its own


@dataclass(frozen=True)
class Counts:
    total: int = 0  # crops the crop stage filed under the character
    pending: int = 0
    accepted: int = 0
    rejected: int = 0
    relabelled_out: int = 0
    relabelled_in: int = 0  # other characters' crops relabelled to this one
    manual: int = 0  # manual boxes drawn for this character


@dataclass(frozen=True)
class QueueItem:
    crop: Crop
    distance: float | None  # from the character's centroid; None when not embedded
    duplicates: tuple[Crop, ...]  # other characters' crops that look like the same picture
    problem: str  # why the crop could not be embedded (an unreadable file), else ""

    @property
    def key(self) -> str:
        return item_key(self.crop.path)


@dataclass(frozen=True)
class RawImage:
    path: str
    character: str
    width: int
    height: int
    detected: tuple[Box, ...]  # the detector's boxes (raw pixels)
    manual: tuple[tuple[Box, str], ...]  # manual boxes in force and whom they show
    no_face: bool  # the detector found nothing


@dataclass
class ReviewState:
    root: Path
    params: Params
    crops: list[Crop]
    raw: list[dict[str, str]]
    face_boxes: dict[str, list[Box]]  # raw path -> detector boxes
    unusable: dict[str, str]  # raw path -> why the crop stage could not read it
    decisions: Decisions
    warnings: list[str]

    @property
    def names(self) -> list[str]:
        return [character.name for character in self.params.characters]

    def crops_of(self, name: str) -> list[Crop]:
        return [crop for crop in self.crops if crop.character == name]

    def counts(self, name: str) -> Counts:
        return self._counts.get(name, Counts())

    @cached_property
    def _counts(self) -> dict[str, Counts]:
        # One pass over everything, once per state: the app shows every character's counts.
        tally: dict[str, Counter] = {name: Counter() for name in self.names}
        for crop in self.crops:
            tally[crop.character]["total"] += 1
            tally[crop.character][_COUNTED_AS[crop.status]] += 1
            if crop.status == "relabelled" and crop.target in tally:
                tally[crop.target]["relabelled_in"] += 1
        raw_character = {row["path"]: row["character"] for row in self.raw}
        for row in self.decisions.manual_boxes():
            name = row.character or raw_character.get(row.path, "")
            if name in tally:
                tally[name]["manual"] += 1
        return {name: Counts(**counter) for name, counter in tally.items()}


_COUNTED_AS = {
    "pending": "pending",
    "accepted": "accepted",
    "rejected": "rejected",
    "relabelled": "relabelled_out",
}


def item_key(path: str) -> str:
    """A short stable id for widget keys (and CSS classes) derived from a crop's path."""
    return hashlib.sha1(path.encode("utf-8")).hexdigest()[:12]


# ---------------------------------------------------------------- reading


def load_state(root: Path, params: Params) -> ReviewState:
    """Everything the app shows, read from the stage outputs and the decisions log."""
    root = Path(root)
    manifest = root / layout.FACES_MANIFEST
    if not manifest.is_file():
        raise FacesNotReady(
            f"{layout.FACES_MANIFEST.as_posix()} does not exist yet: run `.venv/bin/dvc repro` first "
            "(the collect and crop stages make the face crops this app reviews)."
        )
    warnings: list[str] = []
    faces = _shown_rows(root, layout.FACES_MANIFEST, layout.FACE_COLUMNS, warnings)
    raw = _shown_rows(root, layout.RAW_MANIFEST, layout.RAW_COLUMNS, warnings)
    decisions = read_decisions(root / layout.DECISIONS)
    listed = set(params.slugs)
    crops, unlisted = _crops(faces, decisions, listed)
    warnings += decisions.invalid
    warnings += [
        f"{count} crop(s) of {name!r}, which is not in params.yaml, are not shown"
        for name, count in unlisted.items()
    ]
    return ReviewState(
        root=root,
        params=params,
        crops=crops,
        raw=raw,
        face_boxes=_face_boxes(faces),
        unusable=_unusable_raw(root),
        decisions=decisions,
        warnings=warnings,
    )


def _shown_rows(
    root: Path, table: Path, columns: tuple[str, ...], warnings: list[str]
) -> list[dict[str, str]]:
    """A manifest's rows whose path stays in the stage's folder (the app reads those
    files); each other row is a warning, as the review stage reports it."""
    rows = layout.read_table(root, table, columns)
    within = table.parent  # data/faces or data/raw: where the stage writes its files
    checks = {"path": lambda path: layout.project_path(root, path, within)}
    good, bad = layout.screen_rows(table, rows, checks)
    warnings.extend(f"{problem}: not shown" for problem in bad)
    return good


def _crops(
    faces: list[dict[str, str]], decisions: Decisions, listed: set[str]
) -> tuple[list[Crop], Counter]:
    crops: list[Crop] = []
    unlisted: Counter = Counter()
    for face in unique_paths(faces):
        path, name = face["path"], face["character"]
        if name not in listed:
            unlisted[name] += 1
            continue
        now = crop_status(decisions.crops.get(path), name, listed)
        crops.append(Crop(path, name, face["source"], face["phash"], now.status, now.character))
    return crops, unlisted


def _face_boxes(faces: list[dict[str, str]]) -> dict[str, list[Box]]:
    boxes: dict[str, list[Box]] = {}
    for face in faces:
        try:
            box = tuple(int(float(face[name])) for name in ("x", "y", "w", "h"))
        except (TypeError, ValueError):
            continue  # a crop without a usable box still counts as a face found
        boxes.setdefault(face["source"], []).append(box)  # type: ignore[arg-type]
    return boxes


def _unusable_raw(root: Path) -> dict[str, str]:
    rows = layout.read_table(root, layout.FACES_REJECTS, layout.FACE_REJECT_COLUMNS)
    return {row["source"]: row["reason"] for row in rows if row["reason"] != layout.NO_FACE}


# ---------------------------------------------------------------- ordering


def build_queue(
    state: ReviewState, name: str, embeddings: Embeddings | None = None
) -> list[QueueItem]:
    """The character's crops, most suspicious first: unreadable files, then crops that
    look like another character's crop, then by distance from the character's centroid."""
    crops = state.crops_of(name)
    vectors = embeddings.vectors if embeddings else {}
    distances = distances_by_path({c.path: vectors[c.path] for c in crops if c.path in vectors})
    duplicates = duplicate_crops(state)
    failed = embeddings.failed if embeddings else {}
    items = [
        QueueItem(c, distances.get(c.path), duplicates.get(c.path, ()), failed.get(c.path, ""))
        for c in crops
    ]
    items.sort(key=_suspicion_order)
    return items


def _suspicion_order(item: QueueItem) -> tuple:
    return (not item.problem, not item.duplicates, -(item.distance or 0.0), item.crop.path)


def duplicate_crops(state: ReviewState) -> dict[str, tuple[Crop, ...]]:
    """Crop path -> crops of other characters within review.app.duplicate_distance bits.

    Rejected crops are left out (a rejected copy is no conflict any more), and the
    character that counts is the one after relabelling."""
    live = [crop for crop in state.crops if crop.status != "rejected"]
    by_path = {crop.path: crop for crop in live}
    found = cross_character_duplicates(
        [(crop.path, crop.target, crop.phash) for crop in live],
        state.params.review.app.duplicate_distance,
    )
    return {path: tuple(by_path[other] for other in others) for path, others in found.items()}


def filter_items(items: list[QueueItem], show: str) -> list[QueueItem]:
    if show not in FILTERS:
        raise ValueError(f"unknown filter {show!r} (one of {', '.join(FILTERS)})")
    return items if show == "all" else [item for item in items if item.crop.status == show]


def page_count(total: int, page_size: int) -> int:
    return max(1, math.ceil(total / page_size))


def page_items(items: list, page: int, page_size: int) -> list:
    """Page ``page`` (1-based, clamped to the pages there are) of ``items``."""
    page = min(max(page, 1), page_count(len(items), page_size))
    return items[(page - 1) * page_size : page * page_size]


# ---------------------------------------------------------------- writing


def record(root: Path, path: str, decision: str, character: str = "") -> None:
    """Append one decision about a crop (accept, reject or relabel to ``character``)."""
    row = {"path": path, "decision": decision, "character": character, "note": NOTE}
    append_decisions(Path(root) / layout.DECISIONS, [row])


def accept_rest(root: Path, params: Params, name: str) -> int:
    """Accept every crop of ``name`` that is still pending, as one append; returns how many.
    Reads the log afresh, and again under the write's lock, so crops another tab decided
    meanwhile keep that decision."""
    state = load_state(root, params)
    pending = [crop.path for crop in state.crops_of(name) if crop.status == "pending"]
    rows = [
        {"path": path, "decision": "accept", "note": f"{NOTE}: accept the rest"} for path in pending
    ]
    # state.decisions is the log the pending crops were chosen from
    return append_decisions(Path(root) / layout.DECISIONS, rows, unchanged_since=state.decisions)


def check_box(image: RawImage, box: Box) -> None:
    """The check the review stage applies too, so a box the app accepts is cut as drawn."""
    check_box_inside(box, image.width, image.height)


def add_box(root: Path, image: RawImage, box: Box, character: str) -> None:
    """Record a manual face box on a raw image; the review stage crops it."""
    check_box(image, box)
    row = {"path": image.path, "decision": "box", "box": box, "character": character, "note": NOTE}
    append_decisions(Path(root) / layout.DECISIONS, [row])


def withdraw_box(root: Path, image: RawImage, box: Box) -> None:
    """A reject row with the same path and box withdraws a manual box."""
    row = {"path": image.path, "decision": "reject", "box": box, "note": f"{NOTE}: box removed"}
    append_decisions(Path(root) / layout.DECISIONS, [row])


# ---------------------------------------------------------------- raw images


def raw_images(state: ReviewState, name: str) -> list[RawImage]:
    """The character's raw images for manual boxes: those where the detector found no face
    and nobody drew a box yet first, then the other no-face ones, then the rest (where a
    wrong face may have been found); unreadable images are left out."""
    manual: dict[str, list[tuple[Box, str]]] = {}
    for row in state.decisions.manual_boxes():
        assert row.box is not None  # manual_boxes() only yields rows with a box
        manual.setdefault(row.path, []).append((row.box, row.character))
    images = []
    for row in state.raw:
        if row["character"] != name or row["path"] in state.unusable:
            continue
        detected = tuple(state.face_boxes.get(row["path"], ()))
        boxes = tuple((box, who or name) for box, who in manual.get(row["path"], ()))
        size = layout.cell_int(row.get("width")), layout.cell_int(row.get("height"))
        images.append(RawImage(row["path"], name, *size, detected, boxes, not detected))
    images.sort(key=lambda image: (not image.no_face, bool(image.manual)))
    return images


def with_size(root: Path, image: RawImage) -> RawImage:
    """``image`` with its size, read from the picture when the manifest lacks it (a
    hand-edited or older manifest): box inputs need the picture's bounds. ImageRejected
    when the picture no longer decodes."""
    if image.width > 0 and image.height > 0:
        return image
    width, height = load_rgb(Path(root) / image.path).size
    return dataclasses.replace(image, width=width, height=height)


def raw_label(image: RawImage) -> str:
    """A label that stays the same while the app runs (no manual box count): Streamlit's
    selectbox remembers the choice by its label."""
    found = "no face found" if image.no_face else f"{len(image.detected)} face(s) found"
    return f"{Path(image.path).name[:16]} · {found}"


# ---------------------------------------------------------------- pictures


def thumbnail(path: Path, side: int = THUMBNAIL_SIDE) -> bytes:
    """A small JPEG of a crop: a page of 48 full-size PNGs would be megabytes per rerun."""
    image = load_rgb(path)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def box_preview(
    root: Path, image: RawImage, proposed: Box | None, max_side: int = PREVIEW_MAX_SIDE
) -> Image.Image:
    """The raw image with the detector's boxes, the manual ones and the proposed one."""
    picture = load_rgb(Path(root) / image.path)
    draw = ImageDraw.Draw(picture)
    line = max(2, round(max(picture.size) / 200))
    layers = [("detected", image.detected), ("manual", [box for box, _ in image.manual])]
    layers.append(("proposed", [proposed] if proposed else []))
    for kind, boxes in layers:
        for x, y, w, h in boxes:
            draw.rectangle((x, y, x + w - 1, y + h - 1), outline=COLOURS[kind], width=line)
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return picture


def crop_preview(root: Path, image: RawImage, box: Box, margin: float, size: int) -> Image.Image:
    """The crop the review stage will cut from ``box`` (same margin and squaring)."""
    rgb = load_rgb(Path(root) / image.path)
    x, y, side = square_crop_box(box, rgb.width, rgb.height, margin)
    return Image.fromarray(crop_square(np.asarray(rgb), x, y, side, size))
