"""What the review stage will do, read from the crop manifest, the raw manifest and the
decisions log without reading pixels or writing anything (``plan_review``): which detector
crops are kept and under which name, which await a decision, which manual boxes to cut, the
counts per character, and a warning for every decision that cannot be applied."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from anime_face_id import layout
from anime_face_id.config import Params
from anime_face_id.decisions import (
    CropStatus,
    Decision,
    Decisions,
    crop_status,
    format_box,
    read_decisions,
    unique_paths,
)
from anime_face_id.faces.boxes import check_box_inside

MANUAL_DIR = layout.CURATED_DIR / "manual"


EXAMPLES = 3  # paths quoted in an aggregated warning


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


def where(decision: Decision) -> str:
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


def curated_row(face: dict[str, str], character: str, slug: str, status: str) -> dict[str, str]:
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
            f"{where(decision)}: {decision.decision} of {decision.path} names {name!r}, "
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
            self.plan.rows.append(curated_row(face, now.character, slug, "relabelled"))
            counts[slug]["relabelled_in"] += 1
            if face["character"] in self.slugs:
                counts[self.slugs[face["character"]]]["relabelled_out"] += 1
        elif now.status == "rejected":
            counts[slug]["rejected"] += 1
        elif now.status == "accepted":
            self.plan.rows.append(curated_row(face, now.character, slug, "accepted"))
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
            self.warn(f"{where(decision)}: {decision.decision} of {path}: {why}; ignored")

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
                    f"{where(decision)}: the same box on an identical image is already cropped; ignored"
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
            self.warn(f"{where(decision)}: box on {decision.path}, which is {kind}; ignored")
            return None
        name = self.target(decision, decision.character or image["character"])
        if name is None:
            return None
        assert decision.box is not None  # manual_boxes() only yields box rows
        width, height = layout.cell_int(image.get("width")), layout.cell_int(image.get("height"))
        if width and height and not _fits(decision.box, width, height):
            # Refused like the review app refuses it, rather than clipped to another crop.
            self.warn(
                f"{where(decision)}: box {format_box(decision.box)} lies outside "
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
