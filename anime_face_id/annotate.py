"""A picture with each identified face boxed and labelled, for the CLI's ``--annotate``
and the identify app."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from anime_face_id.identify_results import FaceResult

KNOWN_COLOUR = (40, 200, 90)
UNKNOWN_COLOUR = (255, 150, 30)
# Tried in order for a label: Pillow's own font draws ASCII only (an "é" or a "黒" comes out
# as an empty box), so system fonts with wider coverage come first when installed.
SYSTEM_FONTS = ("DejaVuSans.ttf", "NotoSansCJK-Regular.ttc", "NotoSansCJKjp-Regular.otf")

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


@functools.lru_cache(maxsize=32)
def _system_font(name: str, size: int) -> ImageFont.FreeTypeFont | None:
    try:
        return ImageFont.truetype(name, size)  # Pillow looks in the system's font folders
    except OSError:
        return None


def _default_font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fonts(size: int) -> list[Font]:
    found = [_system_font(name, size) for name in SYSTEM_FONTS]
    return [font for font in found if font is not None] + [_default_font(size)]


def draws(font: Font, text: str) -> bool:
    """Whether ``font`` has a glyph for every character of ``text`` (a missing one is drawn
    as the font's "no glyph" box, the same as for U+FFFF)."""
    if not isinstance(font, ImageFont.FreeTypeFont):
        return text.isascii()
    missing = font.getmask("\uffff")
    missing_glyph = (missing.size, bytes(missing))
    for char in set(text):
        if char.isspace():
            continue
        mask = font.getmask(char)
        if (mask.size, bytes(mask)) == missing_glyph:
            return False
    return True


def label_and_font(number: int, face: FaceResult, size: int) -> tuple[str, Font]:
    """ "number. name score" in the first font that can draw the name; "number. score" when
    none can (the face's number leads to its name in the app's cards and the JSON)."""
    named = f"{number}. {face.label} {face.score:.2f}"
    fonts = _fonts(size)
    for font in fonts:
        if draws(font, named):
            return named, font
    return f"{number}. {face.score:.2f}", fonts[-1]


def annotate(image: Image.Image, faces: Sequence[FaceResult]) -> Image.Image:
    """A copy of ``image`` with each face boxed and labelled "number. name score" (unknown
    faces in another colour)."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    size = max(12, min(canvas.size) // 28)
    line = max(2, size // 6)
    for number, face in enumerate(faces, start=1):
        x, y, w, h = face.box
        colour = KNOWN_COLOUR if face.known else UNKNOWN_COLOUR
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=colour, width=line)
        text, font = label_and_font(number, face, size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top
        label_y = y - text_h - 2 * line if y - text_h - 2 * line >= 0 else y + h
        label_x = min(max(0, x), max(0, canvas.width - text_w - 2 * line))
        draw.rectangle(
            [label_x, label_y, label_x + text_w + 2 * line, label_y + text_h + 2 * line],
            fill=colour,
        )
        draw.text((label_x + line - left, label_y + line - top), text, fill=(0, 0, 0), font=font)
    return canvas
