"""Decoding, validating and hashing images: one place that turns bytes into pixels.

Downloaded files are kept byte-for-byte as served; every reader goes through
``load_rgb`` so that CMYK, 16-bit, palette and EXIF-rotated images all arrive as
upright 8-bit RGB.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats we keep, and the file extension each is stored under.
EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tif",
}
DEFAULT_MAX_PIXELS = 40_000_000


class ImageRejected(ValueError):
    """The bytes are not an image we can use; ``reason`` is short and specific."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    format: str
    extension: str
    width: int  # after EXIF orientation
    height: int
    phash: str


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ImageRejected(f"decompression bomb: {error}") from None
    except UnidentifiedImageError:
        head = data[:64].lstrip().lower()
        if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
            raise ImageRejected("not an image: HTML/XML document") from None
        raise ImageRejected("not an image: unrecognised format") from None
    except Exception as error:  # Pillow raises many types for garbage headers
        raise ImageRejected(f"not an image: {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(f"decompression bomb: {width}x{height} exceeds {max_pixels} pixels")
    if image.format not in EXTENSIONS:
        raise ImageRejected(f"unsupported image format {image.format}")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB, whatever the mode (CMYK, I;16, P with transparency, LA ...)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max(initial=0) > 255 else 255.0
        grey = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, str]:
    """Fully decode ``data`` to upright RGB, or raise ImageRejected with the reason."""
    image = _open(data, max_pixels)
    fmt = image.format
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image.load()
        except Image.DecompressionBombError as error:
            raise ImageRejected(f"decompression bomb: {error}") from None
        except (OSError, SyntaxError, ValueError) as error:
            message = str(error)
            if "truncated" in message.lower() or "broken data stream" in message.lower():
                raise ImageRejected(f"truncated image: {message}") from None
            raise ImageRejected(f"corrupt image: {message}") from None
    return to_rgb(image), fmt


def inspect(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    rgb, fmt = decode(data, max_pixels)
    return ImageInfo(fmt, EXTENSIONS[fmt], rgb.width, rgb.height, phash(rgb))


def phash(image: Image.Image) -> str:
    return str(imagehash.phash(image))


def phash_distance(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def load_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    return decode(Path(path).read_bytes(), max_pixels)[0]


def load_rgb_array(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """H x W x 3 uint8, RGB order."""
    return np.asarray(load_rgb(path, max_pixels))
