"""What ``identify`` answers, per face and per picture, and the JSON schema of that answer
(``PICTURE_JSON_SCHEMA``), shared by the CLI, the identify app and the served MLflow model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

SCHEMA = "anime-face-id/identify/v1"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Candidate:
    character: str
    score: float


@dataclass(frozen=True)
class Neighbour:
    character: str
    similarity: float
    path: str


class Naming(NamedTuple):
    """What the gallery says about one face embedding."""

    character: str | None  # None: unknown (best score below the threshold)
    score: float  # the best character's score
    candidates: list[Candidate]
    neighbours: list[Neighbour]


@dataclass(frozen=True)
class FaceResult:
    box: tuple[int, int, int, int]  # x, y, w, h of the detection
    crop: tuple[int, int, int]  # x, y, side of the embedded square
    detector_score: float
    character: str | None  # None: unknown
    score: float
    candidates: list[Candidate]
    neighbours: list[Neighbour]

    @property
    def known(self) -> bool:
        return self.character is not None

    @property
    def label(self) -> str:
        return self.character if self.character is not None else UNKNOWN

    def to_json(self) -> dict:
        x, y, w, h = self.box
        cx, cy, side = self.crop
        return {
            "box": {"x": x, "y": y, "w": w, "h": h},
            "crop": {"x": cx, "y": cy, "side": side},
            "detector_score": rounded(self.detector_score),
            "character": self.character,
            "known": self.known,
            "score": rounded(self.score),
            "candidates": [
                {"character": c.character, "score": rounded(c.score)} for c in self.candidates
            ],
            "neighbours": [
                {"character": n.character, "similarity": rounded(n.similarity), "path": n.path}
                for n in self.neighbours
            ],
        }


@dataclass(frozen=True)
class PictureResult:
    picture: str
    status: str  # ok | no_face | error
    error: str | None = None
    width: int | None = None
    height: int | None = None
    faces: tuple[FaceResult, ...] = ()

    def to_json(self) -> dict:
        return {
            "picture": self.picture,
            "status": self.status,
            "error": self.error,
            "width": self.width,
            "height": self.height,
            "faces": [face.to_json() for face in self.faces],
        }


def rounded(value: float) -> float | None:
    return round(float(value), 4) if math.isfinite(value) else None


def failed(picture: str, reason: str) -> PictureResult:
    return PictureResult(picture, "error", reason)


_NAMED_SCORE = {"type": ["number", "null"]}
_FACE_SCHEMA = {
    "type": "object",
    "required": [
        "box",
        "crop",
        "detector_score",
        "character",
        "known",
        "score",
        "candidates",
        "neighbours",
    ],
    "additionalProperties": False,
    "properties": {
        "box": {
            "type": "object",
            "required": ["x", "y", "w", "h"],
            "additionalProperties": False,
            "properties": {k: {"type": "integer"} for k in "xywh"},
        },
        "crop": {
            "type": "object",
            "required": ["x", "y", "side"],
            "additionalProperties": False,
            "properties": {k: {"type": "integer"} for k in ("x", "y", "side")},
        },
        "detector_score": _NAMED_SCORE,
        "character": {"type": ["string", "null"]},
        "known": {"type": "boolean"},
        "score": _NAMED_SCORE,
        "candidates": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["character", "score"],
                "additionalProperties": False,
                "properties": {"character": {"type": "string"}, "score": _NAMED_SCORE},
            },
        },
        "neighbours": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["character", "similarity", "path"],
                "additionalProperties": False,
                "properties": {
                    "character": {"type": "string"},
                    "similarity": _NAMED_SCORE,
                    "path": {"type": "string"},
                },
            },
        },
    },
}
# The output for one picture, as JSON Schema (the stable contract; README documents it).
PICTURE_JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["picture", "status", "error", "width", "height", "faces"],
    "additionalProperties": False,
    "properties": {
        "picture": {"type": "string"},
        "status": {"enum": ["ok", "no_face", "error"]},
        "error": {"type": ["string", "null"]},
        "width": {"type": ["integer", "null"]},
        "height": {"type": ["integer", "null"]},
        "faces": {"type": "array", "items": _FACE_SCHEMA},
    },
}
