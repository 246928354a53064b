"""The one way pixels become network input, and the training-time augmentation.

``preprocess`` is shared by training, evaluation, the CLI, the apps and the served model,
so that a picture is seen the same way everywhere. ``augment`` starts from exactly the
same letterboxed image and adds random changes suited to drawn faces before the same
normalisation, so training and inference never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from anime_face_id.imaging import to_rgb
from anime_face_id.model.efficientnet_lite import INPUT_MEAN_255, INPUT_STD_255

# Letterbox bars and exposed corners are filled with the normalisation mean, so they
# become zeros at the network input rather than a strong edge.
FILL_VALUE = round(INPUT_MEAN_255[0])

ImageLike = np.ndarray | Image.Image


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the random changes. Drawn faces keep their identity under mirroring
    (hair partings aside), small tilts, zoom and colour shifts of the drawing style; hue
    shifts are kept small because hair and eye colour are strong identity cues."""

    flip_probability: float = 0.5
    max_rotation_deg: float = 12.0
    scale_range: tuple[float, float] = (0.9, 1.15)  # > 1 zooms in (crop jitter)
    max_shift_fraction: float = 0.06
    brightness: float = 0.25  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.25
    saturation: float = 0.25
    max_hue_shift_deg: float = 8.0
    greyscale_probability: float = 0.1
    # random erasing (Zhong et al. 2017; Luo et al. 2019's re-identification baseline): a
    # rectangle of the image becomes the fill value, so no single cue (one eye, one hair
    # clip) can carry the identity alone
    erase_probability: float = 0.0
    erase_area: tuple[float, float] = (0.02, 0.4)  # fraction of the image
    erase_aspect: tuple[float, float] = (0.3, 3.3)  # height / width, drawn log-uniformly
    # lower resolution: users' crops come from thumbnails and from large art alike (small
    # faces are enlarged), so sharpness must not carry the identity. The image is shrunk to
    # a side drawn from ``downscale_range`` (a fraction of its own) and enlarged back.
    downscale_probability: float = 0.0
    downscale_range: tuple[float, float] = (0.3, 0.9)
    # drawing style: artists differ in line weight, in crispness and in how many tones
    # their shading has, none of which says who is drawn. One of DRAWING_STYLES, at a
    # random strength, with this probability. Per RGB channel, colours move too: flatter
    # tones shift hues by up to ~40 degrees at 3-6 levels, and where two colours meet a
    # line filter makes a band of a third. ``style_keeps_hue`` works on the grey value
    # instead, so hair and eye colours stay what they were.
    style_probability: float = 0.0
    style_keeps_hue: bool = False


DEFAULT_AUGMENT = AugmentSettings()


def as_rgb_array(image: ImageLike) -> np.ndarray:
    """H x W x 3 uint8 RGB from a PIL image (any mode) or an RGB/grey uint8 array."""
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB array, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError("empty image (0 pixels)")
    return array


def letterbox(rgb: np.ndarray, image_size: int) -> np.ndarray:
    """Resize keeping the aspect ratio so the longer side is ``image_size``, then pad to a
    square. Padding rather than centre-cropping keeps the whole face (and its hair) when
    a user submits a non-square picture; face crops from the crop stage are square and
    are simply resized."""
    height, width = rgb.shape[:2]
    scale = image_size / max(height, width)
    new_w = max(1, round(width * scale))
    new_h = max(1, round(height * scale))
    # PIL's resampling filters low-pass when shrinking (no aliasing); bicubic when enlarging.
    resample = Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.BICUBIC
    resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), resample))
    if new_w == new_h == image_size:
        return resized
    canvas = np.full((image_size, image_size, 3), FILL_VALUE, dtype=np.uint8)
    top = (image_size - new_h) // 2
    left = (image_size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas


def normalise(rgb: np.ndarray) -> torch.Tensor:
    """uint8 H x W x 3 -> float32 (3, H, W) as the backbone expects."""
    mean = np.asarray(INPUT_MEAN_255, dtype=np.float32)
    std = np.asarray(INPUT_STD_255, dtype=np.float32)
    scaled = (rgb.astype(np.float32) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))


def preprocess(rgb: ImageLike, image_size: int) -> torch.Tensor:
    """Deterministic network input (3, image_size, image_size), float32."""
    return normalise(letterbox(as_rgb_array(rgb), image_size))


def augment(
    rgb: ImageLike,
    rng: np.random.Generator,
    image_size: int,
    settings: AugmentSettings = DEFAULT_AUGMENT,
) -> torch.Tensor:
    """Like ``preprocess`` with random flip, rotation, zoom/shift, colour jitter,
    greyscale, drawing style, erasing and lower resolution drawn from ``rng`` (same
    generator state, same output)."""
    square = letterbox(as_rgb_array(rgb), image_size)
    square = random_geometry(square, rng, settings)
    square = random_colour(square, rng, settings)
    square = random_style(square, rng, settings)
    square = random_erasing(square, rng, settings)
    square = random_downscale(square, rng, settings)
    return normalise(square)


DRAWING_STYLES = ("thicker_lines", "thinner_lines", "crisper", "flatter_tones")
_STROKE_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))


def random_style(
    square: np.ndarray, rng: np.random.Generator, settings: AugmentSettings
) -> np.ndarray:
    """The drawing in another style, or unchanged. Draws nothing at probability 0 (recipes
    without it keep every draw they had); otherwise all three numbers, whatever the outcome."""
    if settings.style_probability <= 0:
        return square
    restyle = rng.random() < settings.style_probability
    style = DRAWING_STYLES[int(rng.integers(len(DRAWING_STYLES)))]
    strength = float(rng.random())
    if not restyle:
        return square
    if settings.style_keeps_hue:
        return drawn_in_style_keeping_hue(square, style, strength)
    return drawn_in_style(square, style, strength)


def drawn_in_style(square: np.ndarray, style: str, strength: float) -> np.ndarray:
    """``square`` redrawn, each RGB channel on its own: ``strength`` 0..1 from a mild to a
    strong change."""
    if style == "flatter_tones":
        return flattened_tones(square, strength).clip(0, 255).astype(np.uint8)
    if style == "crisper":
        blurred = cv2.GaussianBlur(square, (0, 0), 1.0).astype(np.float32)
        return crisped(square.astype(np.float32), blurred, strength).clip(0, 255).astype(np.uint8)
    # a minimum filter widens strokes darker than their surroundings, a maximum filter
    # narrows them; blended, so the change ranges from a hint to a full pixel on each side
    if style not in ("thicker_lines", "thinner_lines"):
        raise ValueError(f"unknown drawing style {style!r}")
    morph = cv2.erode if style == "thicker_lines" else cv2.dilate
    return blended_stroke_change(square, morph(square, _STROKE_KERNEL), strength)


def flattened_tones(values: np.ndarray, strength: float) -> np.ndarray:
    """Cel shading: ``values`` (0..255) quantised to 3 to 8 levels (3 and 8 rarer)."""
    levels = 8 - round(5 * strength)
    step = 256 / levels
    return np.floor(values / step) * step + step / 2


def crisped(values: np.ndarray, blurred: np.ndarray, strength: float) -> np.ndarray:
    """Unsharp masking of float ``values`` by their ``blurred`` copy."""
    amount = 0.5 + 1.5 * strength
    return values * (1 + amount) - blurred * amount


def blended_stroke_change(square: np.ndarray, changed: np.ndarray, strength: float) -> np.ndarray:
    """A line-weight change blended in, from a hint to a full pixel on each side."""
    blend = 0.4 + 0.6 * strength
    mixed = square.astype(np.float32) * (1 - blend) + changed.astype(np.float32) * blend
    return mixed.round().clip(0, 255).astype(np.uint8)


def drawn_in_style_keeping_hue(square: np.ndarray, style: str, strength: float) -> np.ndarray:
    """``square`` redrawn as ``drawn_in_style`` does, through the grey value only: tones and
    crispness change the grey value and add the change to all three channels alike (so
    R - Y and B - Y, the chroma, stay), and line weight moves whole pixels, each taking the
    colour of its darkest or lightest neighbour, so no new colour appears."""
    if style in ("thicker_lines", "thinner_lines"):
        moved = colour_of_extreme_neighbour(square, darkest=style == "thicker_lines")
        return blended_stroke_change(square, moved, strength)
    grey = grey_value(square)
    if style == "flatter_tones":
        new_grey = flattened_tones(grey, strength)
    elif style == "crisper":
        new_grey = crisped(grey, cv2.GaussianBlur(grey, (0, 0), 1.0), strength)
    else:
        raise ValueError(f"unknown drawing style {style!r}")
    shifted = square.astype(np.float32) + (new_grey - grey)[..., None]
    return shifted.round().clip(0, 255).astype(np.uint8)


def grey_value(image: np.ndarray) -> np.ndarray:
    """The luma Y of ITU-R BT.601 (the weights PIL and OpenCV use for RGB -> L), float32
    H x W."""
    image = image.astype(np.float32, copy=False)
    return image[:, :, 0] * 0.299 + image[:, :, 1] * 0.587 + image[:, :, 2] * 0.114


_CROSS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))  # _STROKE_KERNEL's pixels


def colour_of_extreme_neighbour(square: np.ndarray, darkest: bool) -> np.ndarray:
    """Each pixel in the whole colour of the darkest (or lightest) pixel by grey value
    among itself and its 4 neighbours: a minimum (maximum) filter that moves colours
    instead of mixing channels. Ties go to the first in ``_CROSS`` order."""
    height, width = square.shape[:2]
    # edge padding repeats a border pixel, which is in its own neighbourhood already
    grey = np.pad(grey_value(square), 1, mode="edge")
    colour = np.pad(square, ((1, 1), (1, 1), (0, 0)), mode="edge")
    window = [(slice(1 + dy, 1 + dy + height), slice(1 + dx, 1 + dx + width)) for dy, dx in _CROSS]
    greys = np.stack([grey[rows, cols] for rows, cols in window])
    colours = np.stack([colour[rows, cols] for rows, cols in window])
    choice = greys.argmin(axis=0) if darkest else greys.argmax(axis=0)
    return np.take_along_axis(colours, choice[None, :, :, None], axis=0)[0]


def random_downscale(
    square: np.ndarray, rng: np.random.Generator, settings: AugmentSettings
) -> np.ndarray:
    """The image at a lower resolution, enlarged back to its size, or unchanged. Draws
    nothing at probability 0 (the last step, so recipes without it keep every draw and
    every pixel they had); otherwise both numbers, whatever the outcome."""
    if settings.downscale_probability <= 0:
        return square
    shrink = rng.random() < settings.downscale_probability
    fraction = rng.uniform(*settings.downscale_range)
    if not shrink:
        return square
    size = square.shape[0]
    side = max(8, round(size * fraction))
    small = cv2.resize(square, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def erased_rectangle(
    size: int, rng: np.random.Generator, settings: AugmentSettings
) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of the rectangle to erase, or None. Every random number
    is drawn whatever the outcome, so the stream consumed is the same either way."""
    erase = rng.random() < settings.erase_probability
    area = rng.uniform(*settings.erase_area) * size * size
    log_low, log_high = np.log(settings.erase_aspect[0]), np.log(settings.erase_aspect[1])
    aspect = float(np.exp(rng.uniform(log_low, log_high)))
    top_fraction, left_fraction = rng.random(2)
    if not erase:
        return None
    height = min(size, max(1, round(np.sqrt(area * aspect))))
    width = min(size, max(1, round(np.sqrt(area / aspect))))
    top = int(top_fraction * (size - height + 1))
    left = int(left_fraction * (size - width + 1))
    return top, left, height, width


def random_erasing(
    square: np.ndarray, rng: np.random.Generator, settings: AugmentSettings
) -> np.ndarray:
    rectangle = erased_rectangle(square.shape[0], rng, settings)
    if rectangle is None:
        return square
    top, left, height, width = rectangle
    erased = square.copy()
    # the normalisation mean: zeros at the network input, like the letterbox bars
    erased[top : top + height, left : left + width] = FILL_VALUE
    return erased


def random_geometry(
    square: np.ndarray, rng: np.random.Generator, settings: AugmentSettings
) -> np.ndarray:
    size = square.shape[0]
    angle = rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg)
    scale = rng.uniform(*settings.scale_range)
    shift_x, shift_y = (
        rng.uniform(-settings.max_shift_fraction, settings.max_shift_fraction, size=2) * size
    )
    flip = rng.random() < settings.flip_probability
    centre = ((size - 1) / 2.0, (size - 1) / 2.0)
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)
    matrix[:, 2] += (shift_x, shift_y)
    if flip:
        # mirror about the vertical centre line after the rotation/zoom: x -> (size-1) - x
        matrix[0, :] = -matrix[0, :]
        matrix[0, 2] += size - 1
    return cv2.warpAffine(
        square,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(FILL_VALUE, FILL_VALUE, FILL_VALUE),
    )


def random_colour(
    square: np.ndarray, rng: np.random.Generator, settings: AugmentSettings
) -> np.ndarray:
    # Draw every random number up front so the stream consumed does not depend on the
    # branches taken (the same seed always gives the same sequence of decisions).
    brightness = rng.uniform(1 - settings.brightness, 1 + settings.brightness)
    contrast = rng.uniform(1 - settings.contrast, 1 + settings.contrast)
    saturation = rng.uniform(1 - settings.saturation, 1 + settings.saturation)
    hue_shift = rng.uniform(-settings.max_hue_shift_deg, settings.max_hue_shift_deg)
    greyscale = rng.random() < settings.greyscale_probability

    image = square.astype(np.float32) * brightness
    grey_mean = grey_value(image).mean()
    image = (image - grey_mean) * contrast + grey_mean
    grey = grey_value(image)[:, :, None]
    image = (image - grey) * saturation + grey
    image = np.clip(image, 0, 255).astype(np.uint8)
    image = _shift_hue(image, hue_shift)
    if greyscale:
        image = np.repeat(grey_value(image)[:, :, None], 3, axis=2)
        image = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return image


def _shift_hue(rgb: np.ndarray, degrees: float) -> np.ndarray:
    # OpenCV stores 8-bit hue as degrees / 2 in [0, 180)
    steps = round(degrees / 2.0)
    if steps == 0:
        return rgb
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int16) + steps) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
