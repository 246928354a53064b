"""The review checkpoint: apply the human decisions to the face crops.

Inputs are the crop manifest, the raw manifest (manual boxes are drawn on raw images) and
the decisions log; the output is data/curated: a manifest of the crops that go on to the
split, plus the crops cut from manual boxes. The stage only reads the decisions log; the
one writer here is ``accept_pending``, a reviewer's sign-off (flows/pipeline.py, in the
reviewer's name), which appends and never rewrites.

A decision that cannot be applied (a path that is not in the manifests, a character that
is not in params.yaml, a malformed row, a box that does not fit its picture) is reported as
a warning and otherwise ignored: one stale or mistyped row must not block a pipeline run,
and rewriting the human's log would destroy the audit trail. Manifest rows whose path or
sha256 could lead a read or a write out of data/ are reported and left out the same way.
The reading and planning is ``review_plan.plan_review``; this module writes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from anime_face_id import layout
from anime_face_id.config import Params
from anime_face_id.decisions import append_decisions, read_decisions
from anime_face_id.errors import StageError
from anime_face_id.faces.boxes import check_box_inside, crop_square, square_crop_box
from anime_face_id.fileio import atomic_write_bytes, sweep_temporaries, write_csv
from anime_face_id.imaging import ImageRejected, load_rgb_array, phash
from anime_face_id.review_plan import (
    MANUAL_DIR,
    ManualCrop,
    ReviewPlan,
    curated_row,
    plan_review,
    where,
)

SUMMARY_COUNTS = (
    "crops",
    "accepted",
    "rejected",
    "relabelled_in",
    "relabelled_out",
    "manual",
    "pending",
)


class ReviewIncomplete(StageError):
    """Crops await review and review.require_complete is true; nothing was written."""

    def __init__(
        self, pending: int, total: int, characters: int, warnings: list[str] | None = None
    ):
        self.pending = pending
        self.total = total
        self.characters = characters
        self.warnings = list(warnings or [])
        noun = "character" if characters == 1 else "characters"
        message = (
            f"Review incomplete: {pending} of {total} face crops (belonging to {characters} "
            f"{noun}) await review, with no decision in {layout.DECISIONS.as_posix()}. "
            "Run `make review` to open the review app and accept, reject or relabel them, "
            "or set review.require_complete: false in params.yaml to accept pending crops "
            "as they are."
        )
        if self.warnings:
            message += (
                f" {len(self.warnings)} decision row(s) could not be applied; see the warnings."
            )
        super().__init__(message)


@dataclass
class ReviewSummary:
    rows: list[dict]  # per character: character, slug, *SUMMARY_COUNTS, curated
    warnings: list[str]
    pending: int
    curated: int


def _summary(plan: ReviewPlan, params: Params, curated: list[dict[str, str]]) -> ReviewSummary:
    rows = []
    for name, slug in params.slugs.items():
        counts = plan.counts[slug]
        row: dict = {"character": name, "slug": slug}
        row.update({key: counts[key] for key in SUMMARY_COUNTS})
        row["curated"] = sum(item["slug"] == slug for item in curated)
        rows.append(row)
    return ReviewSummary(rows, list(plan.warnings), len(plan.pending), len(curated))


def _planned_rows(plan: ReviewPlan, accept_pending: bool) -> list[dict[str, str]]:
    rows = list(plan.rows)
    if accept_pending:
        rows += [
            curated_row(face, face["character"], face["slug"], "pending_accepted")
            for face in plan.pending
        ]
    return rows


def review_status(root: Path, params: Params) -> ReviewSummary:
    """Counts per character as the stage would produce them; reads no pixels, writes nothing.

    Manual boxes are counted as planned: an unreadable raw image only shows up when the
    stage runs."""
    plan = plan_review(root, params)
    rows = _planned_rows(plan, not params.review.require_complete)
    manual = [{"slug": item.slug} for item in plan.manual]
    return _summary(plan, params, rows + manual)


def _cut_manual(root: Path, manual: ManualCrop, margin: float, size: int) -> dict[str, str]:
    assert manual.decision.box is not None  # manual_boxes() only yields box rows
    source = layout.project_path(root, manual.decision.path, layout.RAW_DIR)
    destination = layout.project_path(root, manual.path, MANUAL_DIR)
    rgb = load_rgb_array(source)
    height, width = rgb.shape[:2]
    # Again on the decoded picture: the manifest's size may be missing or out of date.
    check_box_inside(manual.decision.box, width, height)
    x, y, side = square_crop_box(manual.decision.box, width, height, margin)
    face = Image.fromarray(crop_square(rgb, x, y, side, size))
    buffer = io.BytesIO()
    face.save(buffer, format="PNG")
    atomic_write_bytes(destination, buffer.getvalue())
    return {
        "character": manual.character,
        "slug": manual.slug,
        "path": manual.path,
        "source": manual.decision.path,
        "source_sha256": manual.raw.get("sha256", ""),
        "phash": phash(face),
        "source_phash": manual.raw.get("phash", ""),
        "origin": "manual",
        "status": "manual",
    }


def _cut_all_manual(root: Path, plan: ReviewPlan, params: Params) -> list[dict[str, str]]:
    rows = []
    for manual in plan.manual:
        try:
            rows.append(_cut_manual(root, manual, params.crop.margin, params.crop.size))
        except (ImageRejected, OSError, ValueError) as error:
            reason = error.reason if isinstance(error, ImageRejected) else str(error)
            plan.counts[manual.slug]["manual"] -= 1
            plan.warnings.append(
                f"{where(manual.decision)}: cannot cut the box from {manual.decision.path}: {reason}"
            )
    return rows


def _remove_stale(root: Path, keep: set[str]) -> None:
    directory = root / MANUAL_DIR
    if not directory.is_dir():
        return
    for path in sorted(directory.rglob("*"), reverse=True):  # children before their folders
        relative = path.relative_to(root).as_posix()
        if path.is_dir():
            if not any(path.iterdir()):
                path.rmdir()
        elif relative not in keep:
            path.unlink()


def review_blocker(plan: ReviewPlan) -> ReviewIncomplete | None:
    """The error the stage stops with when crops await review (None if none do)."""
    if not plan.pending:
        return None
    characters = len({face["character"] for face in plan.pending})
    return ReviewIncomplete(len(plan.pending), plan.total, characters, plan.warnings)


def accept_pending(root: Path, params: Params, note: str) -> int:
    """Record an `accept` decision for every crop still pending (a reviewer's sign-off);
    returns how many were accepted. A crop decided in the review app while this runs keeps
    that decision."""
    log = Path(root) / layout.DECISIONS
    seen = read_decisions(log)
    pending = plan_review(root, params).pending
    rows = [{"path": face["path"], "decision": "accept", "note": note} for face in pending]
    return append_decisions(log, rows, unchanged_since=seen)


def apply_review(root: Path, params: Params) -> ReviewSummary:
    """Write data/curated (manifest + manual crops) from the crops and the decisions.

    Raises ReviewIncomplete, before writing anything, when crops await review and
    review.require_complete is true."""
    root = Path(root)
    plan = plan_review(root, params)
    take_pending = not params.review.require_complete
    blocker = review_blocker(plan)
    if blocker and not take_pending:
        raise blocker
    sweep_temporaries(root / layout.CURATED_DIR)
    rows = _planned_rows(plan, take_pending) + _cut_all_manual(root, plan, params)
    rows.sort(key=lambda row: (row["slug"], row["path"]))
    write_csv(root / layout.CURATED_MANIFEST, layout.CURATED_COLUMNS, rows)
    _remove_stale(root, {row["path"] for row in rows if row["origin"] == "manual"})
    return _summary(plan, params, rows)
