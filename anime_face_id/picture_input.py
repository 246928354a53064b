"""Pictures handed to ``identify`` as raw bytes or base64 text (files: ``imaging.read_picture``),
refused with a specific reason (``ImageRejected``) before anything large is decoded."""

from __future__ import annotations

import base64
import binascii

from PIL import Image

from anime_face_id.imaging import DEFAULT_MAX_DECODE_BYTES, ImageRejected, decode


def decode_picture(
    data: bytes, max_bytes: int, max_pixels: int, max_memory: int = DEFAULT_MAX_DECODE_BYTES
) -> Image.Image:
    """Upright RGB, or ImageRejected with the reason (size limits checked before decoding)."""
    if len(data) > max_bytes:
        raise ImageRejected(f"too large: {len(data)} bytes (the limit is {max_bytes})")
    return decode(data, max_pixels, max_memory)[0]


def base64_bytes(text: object, max_bytes: int) -> bytes:
    """Bytes of a base64 string (a ``data:image/...;base64,`` prefix is allowed)."""
    if not isinstance(text, str) or not text.strip():
        raise ImageRejected("no image given: expected a base64-encoded picture")
    text = text.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    if len(text) * 3 // 4 > max_bytes + 2:
        raise ImageRejected(
            f"too large: about {len(text) * 3 // 4} bytes (the limit is {max_bytes})"
        )
    # MIME-wrapped lines (encodebytes, `base64` without -w0), the URL-safe alphabet and
    # missing padding are all common in clients; anything else is refused.
    text = "".join(text.split()).replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageRejected(f"not base64: {error}") from None
