"""A picture with each identified face boxed and labelled, for the CLI's ``--annotate``
and the identify app."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from anime_face_id.identify_results import FaceResult

KNOWN_COLOUR = (40, 200, 90)
UNKNOWN_COLOUR = (255, 150, 30)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def annotate(image: Image.Image, faces: Sequence[FaceResult]) -> Image.Image:
    """A copy of ``image`` with each face boxed and labelled "name score" (unknown faces
    in another colour)."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    size = max(12, min(canvas.size) // 28)
    font = _font(size)
    line = max(2, size // 6)
    for number, face in enumerate(faces, start=1):
        x, y, w, h = face.box
        colour = KNOWN_COLOUR if face.known else UNKNOWN_COLOUR
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=colour, width=line)
        text = f"{number}. {face.label} {face.score:.2f}"
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
