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
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from anime_face_id import layout
from anime_face_id.config import Params
from anime_face_id.decisions import (
    CropStatus,
    Decision,
    Decisions,
    append_decisions,
    crop_status,
    format_box,
    read_decisions,
    unique_paths,
)
from anime_face_id.errors import StageError
from anime_face_id.faces.boxes import check_box_inside, crop_square, square_crop_box
from anime_face_id.fileio import atomic_write_bytes, sweep_temporaries, write_csv
from anime_face_id.imaging import ImageRejected, load_rgb_array, phash

MANUAL_DIR = layout.CURATED_DIR / "manual"
SUMMARY_COUNTS = (
    "crops",
    "accepted",
    "rejected",
    "relabelled_in",
    "relabelled_out",
    "manual",
    "pending",
)
EXAMPLES = 3  # paths quoted in an aggregated warning


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


@dataclass(frozen=True)
class ManualCrop:
    """A manual box to cut: who it is, from which raw image, and where the crop goes."""

    decision: Decision
    character: str
    slug: str
    raw: dict[str, str]
    path: str  # POSIX, relative to the project root


@dataclass
class ReviewPlan:
    rows: list[dict[str, str]] = field(
        default_factory=list
    )  # detector crops kept (CURATED_COLUMNS)
    pending: list[dict[str, str]] = field(default_factory=list)  # crops with no decision
    manual: list[ManualCrop] = field(default_factory=list)
    counts: dict[str, Counter] = field(default_factory=dict)  # per slug
    warnings: list[str] = field(default_factory=list)
    total: int = 0  # face crops of listed characters


def _where(decision: Decision) -> str:
    return f"{layout.DECISIONS.name} line {decision.line}"


def _examples(paths: list[str]) -> str:
    shown = ", ".join(paths[:EXAMPLES])
    return shown + (f" and {len(paths) - EXAMPLES} more" if len(paths) > EXAMPLES else "")


def _read_faces(root: Path, warnings: list[str]) -> list[dict[str, str]]:
    rows = layout.read_table(root, layout.FACES_MANIFEST, layout.FACE_COLUMNS, "crop")
    checks = {"path": lambda path: layout.project_path(root, path, layout.FACES_DIR)}
    return _usable_rows(layout.FACES_MANIFEST, rows, checks, "crop", warnings)


def _read_raw(root: Path, warnings: list[str]) -> dict[str, dict[str, str]]:
    # Optional: only manual boxes need it; they are reported as unknown images without it.
    rows = layout.read_table(root, layout.RAW_MANIFEST, layout.RAW_COLUMNS)
    checks = {
        "path": lambda path: layout.project_path(root, path, layout.RAW_DIR),
        "sha256": layout.require_sha256,  # names the crops cut from manual boxes
    }
    usable = _usable_rows(layout.RAW_MANIFEST, rows, checks, "raw image", warnings)
    return {row["path"]: row for row in usable}


def _usable_rows(
    table: Path, rows: list[dict[str, str]], checks: dict, what: str, warnings: list[str]
) -> list[dict[str, str]]:
    """Rows whose paths and names are safe to use; each other one becomes a warning."""
    good, bad = layout.screen_rows(table, rows, checks)
    warnings.extend(f"{problem}: the {what} is left out" for problem in bad)
    return good


def _curated_row(face: dict[str, str], character: str, slug: str, status: str) -> dict[str, str]:
    row = {name: face.get(name, "") for name in layout.CURATED_COLUMNS}
    row.update(character=character, slug=slug, origin="detector", status=status)
    return row


class _Planner:
    """Walks the crops and decisions once, filling a ReviewPlan."""

    def __init__(self, root: Path, params: Params):
        self.root = root
        self.slugs = params.slugs  # listed name -> slug, in params order
        self.plan = ReviewPlan(counts={slug: Counter() for slug in self.slugs.values()})

    def warn(self, message: str) -> None:
        self.plan.warnings.append(message)

    def target(self, decision: Decision, name: str) -> str | None:
        if name in self.slugs:
            return name
        self.warn_unlisted(decision, name)
        return None

    def warn_unlisted(self, decision: Decision, name: str) -> None:
        self.warn(
            f"{_where(decision)}: {decision.decision} of {decision.path} names {name!r}, "
            "which is not a character in params.yaml; ignored"
        )

    def crops(self, faces: list[dict[str, str]], decisions: Decisions) -> set[str]:
        missing: list[str] = []
        unlisted: Counter = Counter()
        faces = unique_paths(faces)
        for face in faces:
            path, name = face["path"], face["character"]
            if name in self.slugs:
                self.plan.total += 1
                self.plan.counts[self.slugs[name]]["crops"] += 1
            now = crop_status(decisions.crops.get(path), name, self.slugs)
            if now.ignored is not None:
                self.warn_unlisted(now.ignored, now.ignored.character)
            if now.status != "rejected" and not (self.root / path).is_file():
                missing.append(path)
            elif name not in self.slugs and now.status != "relabelled":
                if now.status != "rejected":  # rejected crops of a dropped character are no loss
                    unlisted[name] += 1
            else:
                self.crop(face, now)
        if missing:
            self.warn(
                f"{len(missing)} crop(s) in the crop manifest have no file and are left out: {_examples(missing)}"
            )
        for name, count in unlisted.items():
            self.warn(
                f"character {name!r} is not in params.yaml: {count} of its crops are left out"
            )
        return {face["path"] for face in faces}

    def crop(self, face: dict[str, str], now: CropStatus) -> None:
        slug = self.slugs[now.character]
        counts = self.plan.counts
        if now.status == "relabelled":
            self.plan.rows.append(_curated_row(face, now.character, slug, "relabelled"))
            counts[slug]["relabelled_in"] += 1
            if face["character"] in self.slugs:
                counts[self.slugs[face["character"]]]["relabelled_out"] += 1
        elif now.status == "rejected":
            counts[slug]["rejected"] += 1
        elif now.status == "accepted":
            self.plan.rows.append(_curated_row(face, now.character, slug, "accepted"))
            counts[slug]["accepted"] += 1
        else:
            # The manifest's slug predates any params edit; params.yaml is the truth.
            self.plan.pending.append({**face, "slug": slug})
            counts[slug]["pending"] += 1

    def stray_decisions(self, decisions: Decisions, face_paths: set[str], raw: dict) -> None:
        for path, decision in decisions.crops.items():
            if path in face_paths:
                continue
            if path in raw:
                why = "a raw image (only box decisions apply to raw images)"
            else:
                why = f"not a crop in {layout.FACES_MANIFEST.as_posix()} (re-cropped or mistyped?)"
            self.warn(f"{_where(decision)}: {decision.decision} of {path}: {why}; ignored")

    def manual_boxes(
        self, decisions: Decisions, raw: dict[str, dict[str, str]], face_paths: set[str]
    ) -> None:
        outputs: set[str] = set()
        for decision in decisions.manual_boxes():
            manual = self.manual_box(decision, raw, face_paths)
            if manual is None:
                continue
            if manual.path in outputs:
                self.warn(
                    f"{_where(decision)}: the same box on an identical image is already cropped; ignored"
                )
                continue
            outputs.add(manual.path)
            self.plan.manual.append(manual)
            self.plan.counts[manual.slug]["manual"] += 1

    def manual_box(
        self, decision: Decision, raw: dict[str, dict[str, str]], face_paths: set[str]
    ) -> ManualCrop | None:
        image = raw.get(decision.path)
        if image is None:
            kind = (
                "a face crop, not a raw image"
                if decision.path in face_paths
                else "not in the raw manifest"
            )
            self.warn(f"{_where(decision)}: box on {decision.path}, which is {kind}; ignored")
            return None
        name = self.target(decision, decision.character or image["character"])
        if name is None:
            return None
        assert decision.box is not None  # manual_boxes() only yields box rows
        width, height = _int(image.get("width")), _int(image.get("height"))
        if width and height and not _fits(decision.box, width, height):
            # Refused like the review app refuses it, rather than clipped to another crop.
            self.warn(
                f"{_where(decision)}: box {format_box(decision.box)} lies outside "
                f"{decision.path} ({width}x{height}), in whole or in part; ignored "
                "(draw it again in the review app)"
            )
            return None
        slug = self.slugs[name]
        return ManualCrop(decision, name, slug, image, _manual_path(slug, image, decision))


def _fits(box: tuple[int, int, int, int], width: int, height: int) -> bool:
    try:
        check_box_inside(box, width, height)
    except ValueError:
        return False
    return True


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _manual_path(slug: str, image: dict[str, str], decision: Decision) -> str:
    # The raw sha256 names the picture whatever its path; the box makes each crop unique.
    # Both it and the slug were checked (_read_raw, params), so the name stays in MANUAL_DIR.
    digest = layout.require_sha256(image["sha256"])
    x, y, w, h = decision.box or (0, 0, 0, 0)
    return (
        MANUAL_DIR / layout.require_slug(slug) / f"{digest[:12]}_{x}_{y}_{w}_{h}.png"
    ).as_posix()


def plan_review(root: Path, params: Params) -> ReviewPlan:
    """What the review stage would do, without reading pixels or writing anything."""
    root = Path(root)
    warnings: list[str] = []
    faces = _read_faces(root, warnings)
    raw = _read_raw(root, warnings)
    decisions = read_decisions(root / layout.DECISIONS)
    planner = _Planner(root, params)
    planner.plan.warnings.extend(warnings + decisions.invalid)
    face_paths = planner.crops(faces, decisions)
    planner.stray_decisions(decisions, face_paths, raw)
    planner.manual_boxes(decisions, raw, face_paths)
    return planner.plan


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
            _curated_row(face, face["character"], face["slug"], "pending_accepted")
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
                f"{_where(manual.decision)}: cannot cut the box from {manual.decision.path}: {reason}"
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
    returns how many were accepted."""
    pending = plan_review(root, params).pending
    if pending:
        append_decisions(
            Path(root) / layout.DECISIONS,
            [{"path": face["path"], "decision": "accept", "note": note} for face in pending],
        )
    return len(pending)


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
