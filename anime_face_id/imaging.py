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

from anime_face_id.fileio import UnreadableFile, read_regular_file
from anime_face_id.memory import DECODE_BUDGET, release_freed_memory

# Formats we keep, and the file extension each is stored under.
EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",  # a JPEG with more frames after the first (phones' Ultra HDR, 3D cameras)
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tif",
}
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_DECODE_BYTES = 512 * 2**20
ORIENTATION_TAG = 0x0112
# Decodes this large hand their memory back to the system when they finish (see
# memory.release_freed_memory): otherwise a server keeps its peak for ever.
_TRIM_AFTER_BYTES = 64 * 2**20


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
    except MemoryError:
        raise ImageRejected("not an image: header asks for more memory than there is") from None
    except Exception as error:  # Pillow raises many types for garbage headers
        raise ImageRejected(f"not an image: {_describe(error)}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(f"decompression bomb: {width}x{height} exceeds {max_pixels} pixels")
    if image.format not in EXTENSIONS:
        raise ImageRejected(f"unsupported image format {image.format}")
    return image


def _describe(error: BaseException) -> str:
    """Pillow's parsers raise bare SyntaxError, struct.error, IndexError ... with terse
    messages; the type says which part of the file was broken."""
    message = str(error).strip()
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


# Bytes per pixel Pillow keeps for each mode (RGB is stored padded to 4).
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Working set on top of the decoded image while it is made upright RGB: the RGB result
# (4 B/px in Pillow), one transposed or RGBA copy (4 B/px) and numpy's views of it.
_CONVERSION_BYTES_PER_PIXEL = 8


def decode_cost(image: Image.Image) -> int:
    """Peak bytes that decoding ``image`` to upright RGB may take (an upper estimate)."""
    width, height = image.size
    stored = _STORED_BYTES.get(image.mode, 4)
    return width * height * (stored + _CONVERSION_BYTES_PER_PIXEL)


def _check_memory(image: Image.Image, max_memory: int) -> int:
    cost = decode_cost(image)
    if cost > max_memory:
        width, height = image.size
        raise ImageRejected(
            f"too much memory: decoding {width}x{height} {image.mode} takes about "
            f"{_mib(cost)} MiB (the limit is {_mib(max_memory)} MiB)"
        )
    return cost


def _mib(size: int) -> int:
    return -(-size // 2**20)


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB, whatever the mode (CMYK, I;16, P with transparency, LA ...).

    Copies are made only where a conversion needs one: a 36-megapixel picture must not
    be held three times over.
    """
    if image.getexif().get(ORIENTATION_TAG, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return Image.fromarray(_sixteen_bit_to_grey(np.asarray(image)), "L").convert("RGB")
    if image.mode == "F":
        array = np.asarray(image)
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _sixteen_bit_to_grey(array: np.ndarray, rows: int = 512) -> np.ndarray:
    """Scale 16-bit (or 32-bit integer) grey to 8 bits, a band of rows at a time so that
    the float working copy stays small."""
    top = 65535.0 if array.max(initial=0) > 255 else 255.0
    grey = np.empty(array.shape, dtype=np.uint8)
    for start in range(0, array.shape[0], rows):
        band = array[start : start + rows].astype(np.float32)
        grey[start : start + rows] = np.clip(band / top * 255.0 + 0.5, 0, 255)
    return grey


def decode(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_memory: int = DEFAULT_MAX_DECODE_BYTES,
) -> tuple[Image.Image, str]:
    """Fully decode ``data`` to upright RGB, or raise ImageRejected with the reason.

    Nothing else leaves this function for any input: Pillow's parsers raise whatever
    their code happens to hit on hostile bytes (SyntaxError from a corrupt EXIF block,
    struct.error, IndexError ...), and one bad picture must never stop a batch.
    """
    image = _open(data, max_pixels)
    fmt = image.format
    cost = _check_memory(image, max_memory)
    with DECODE_BUDGET.reserve(cost):
        try:
            rgb = _load_rgb(image)
        finally:
            if cost >= _TRIM_AFTER_BYTES:
                release_freed_memory()
    return rgb, fmt


def _load_rgb(image: Image.Image) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # "Corrupt EXIF data", "Metadata Warning": nothing a user could act on
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        try:
            image.load()
            return to_rgb(image)
        except ImageRejected:
            raise
        except Image.DecompressionBombError as error:
            raise ImageRejected(f"decompression bomb: {error}") from None
        except MemoryError:
            raise ImageRejected("too much memory: the picture could not be decoded") from None
        except Exception as error:
            message = str(error).lower()
            if "truncated" in message or "broken data stream" in message:
                raise ImageRejected(f"truncated image: {_describe(error)}") from None
            raise ImageRejected(f"corrupt image: {_describe(error)}") from None


def inspect(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_memory: int = DEFAULT_MAX_DECODE_BYTES,
) -> ImageInfo:
    rgb, fmt = decode(data, max_pixels, max_memory)
    return ImageInfo(fmt, EXTENSIONS[fmt], rgb.width, rgb.height, phash(rgb))


def phash(image: Image.Image) -> str:
    return str(imagehash.phash(image))


def phash_distance(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def read_picture(path: str | Path, max_bytes: int = DEFAULT_MAX_DECODE_BYTES) -> bytes:
    """The file's bytes; a missing file, a file over ``max_bytes``, a pipe (which would
    block for ever) or a device is refused unread (ImageRejected)."""
    try:
        return read_regular_file(path, max_bytes)
    except UnreadableFile as error:
        prefix = "" if error.reason.startswith("too large") else "cannot read: "
        raise ImageRejected(prefix + error.reason) from None


def load_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    return decode(read_picture(path), max_pixels)[0]


def load_rgb_array(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """H x W x 3 uint8, RGB order."""
    return np.asarray(load_rgb(path, max_pixels))
