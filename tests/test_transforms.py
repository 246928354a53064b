"""preprocess is deterministic with the backbone's normalisation; augment is random per
generator state, reproducible per seed, and keeps the image recognisable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anime_face_id.transforms import AugmentSettings, augment, letterbox, preprocess

NO_CHANGE = AugmentSettings(
    flip_probability=0.0,
    max_rotation_deg=0.0,
    scale_range=(1.0, 1.0),
    max_shift_fraction=0.0,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
    max_hue_shift_deg=0.0,
    greyscale_probability=0.0,
)


def drawn_face(height: int = 120, width: int = 120) -> np.ndarray:
    """A synthetic 'face': coloured background, a face disc, two eyes, off-centre hair."""
    rng = np.random.default_rng(7)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:] = (40, 90, 160)
    yy, xx = np.mgrid[:height, :width]
    cy, cx, r = height / 2, width / 2, min(height, width) / 3
    image[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = (250, 220, 200)
    image[(yy - cy + r * 0.1) ** 2 + (xx - cx + r * 0.4) ** 2 < (r * 0.15) ** 2] = (30, 160, 60)
    image[(yy - cy + r * 0.1) ** 2 + (xx - cx - r * 0.4) ** 2 < (r * 0.15) ** 2] = (30, 160, 60)
    image[: int(cy - r * 0.5), : int(cx + r * 0.6)] = (200, 40, 40)  # asymmetric hair
    return np.clip(image + rng.integers(0, 8, image.shape), 0, 255).astype(np.uint8)


def test_preprocess_shape_dtype_range_and_normalisation():
    tensor = preprocess(drawn_face(), 96)
    assert tensor.shape == (3, 96, 96) and tensor.dtype == torch.float32
    assert tensor.is_contiguous()
    assert float(tensor.min()) >= -1.0 and float(tensor.max()) <= 1.0
    white = preprocess(np.full((10, 10, 3), 255, dtype=np.uint8), 32)
    black = preprocess(np.zeros((10, 10, 3), dtype=np.uint8), 32)
    assert torch.allclose(white, torch.full_like(white, 128 / 128))  # (255 - 127) / 128
    assert torch.allclose(black, torch.full_like(black, -127 / 128))


def test_preprocess_is_deterministic_and_accepts_pil_and_arrays():
    face = drawn_face()
    first = preprocess(face, 64)
    assert torch.equal(first, preprocess(face, 64))
    assert torch.equal(first, preprocess(Image.fromarray(face), 64))
    # RGBA and greyscale inputs arrive as RGB
    rgba = Image.fromarray(face).convert("RGBA")
    assert torch.equal(preprocess(rgba, 64), first)
    grey = preprocess(np.asarray(Image.fromarray(face).convert("L")), 64)
    assert grey.shape == (3, 64, 64) and torch.equal(grey[0], grey[1])


def test_preprocess_keeps_aspect_ratio_by_padding():
    wide = np.zeros((50, 100, 3), dtype=np.uint8)  # black, twice as wide as tall
    square = letterbox(wide, 40)
    assert square.shape == (40, 40, 3)
    # rows 10-29 hold the image; bars of the mean value above and below
    assert (square[10:30] == 0).all()
    assert (square[:10] == 127).all() and (square[30:] == 127).all()
    tensor = preprocess(wide, 40)
    assert torch.allclose(tensor[:, :10], torch.zeros(3, 10, 40))  # bars are zero input


def test_preprocess_rejects_bad_arrays():
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((8, 8, 3), dtype=np.float32), 16)
    with pytest.raises(ValueError, match="H x W x 3"):
        preprocess(np.zeros((8, 8, 4), dtype=np.uint8), 16)
    with pytest.raises(ValueError, match="empty"):
        preprocess(np.zeros((0, 8, 3), dtype=np.uint8), 16)


def test_augment_is_reproducible_per_seed_and_varies_with_the_generator():
    face = drawn_face()
    a = augment(face, np.random.default_rng(3), 64)
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, augment(face, np.random.default_rng(3), 64))
    rng = np.random.default_rng(3)
    draws = [augment(face, rng, 64) for _ in range(8)]
    assert all(not torch.equal(draws[0], other) for other in draws[1:])
    assert torch.equal(draws[0], a)  # the first draw of a generator is the seed's output


def test_augment_without_changes_equals_preprocess():
    face = drawn_face(100, 130)
    assert torch.allclose(
        augment(face, np.random.default_rng(0), 64, NO_CHANGE), preprocess(face, 64), atol=1e-6
    )


def test_augment_stays_close_to_the_original():
    face = drawn_face()
    reference = preprocess(face, 64)
    mirrored = torch.flip(reference, dims=[2])
    rng = np.random.default_rng(11)
    for _ in range(20):
        out = augment(face, rng, 64)
        assert float(out.min()) >= -127 / 128 - 1e-6 and float(out.max()) <= 1.0 + 1e-6
        # closer to the picture (or its mirror) than to a different random picture
        distance = min((out - reference).abs().mean(), (out - mirrored).abs().mean())
        assert distance < (out - preprocess(drawn_face()[::-1].copy(), 64)).abs().mean()


def test_each_augmentation_does_what_it_says():
    face = drawn_face()
    reference = preprocess(face, 64)
    flip_only = AugmentSettings(**{**NO_CHANGE.__dict__, "flip_probability": 1.0})
    assert torch.allclose(
        augment(face, np.random.default_rng(0), 64, flip_only), torch.flip(reference, dims=[2])
    )
    grey_only = AugmentSettings(**{**NO_CHANGE.__dict__, "greyscale_probability": 1.0})
    grey = augment(face, np.random.default_rng(0), 64, grey_only)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    bright_only = AugmentSettings(**{**NO_CHANGE.__dict__, "brightness": 0.5})
    brightness = [
        float(augment(face, np.random.default_rng(s), 64, bright_only).mean()) for s in range(10)
    ]
    assert max(brightness) - min(brightness) > 0.2
    rotate_only = AugmentSettings(**{**NO_CHANGE.__dict__, "max_rotation_deg": 15.0})
    rotated = augment(face, np.random.default_rng(0), 64, rotate_only)
    assert not torch.allclose(rotated, reference) and (rotated - reference).abs().mean() < 0.3


def erased_mask(changed: torch.Tensor) -> np.ndarray:
    """Where two network inputs differ, as an H x W boolean array."""
    return (changed.abs().sum(dim=0) > 1e-6).numpy()


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return rows.min(), cols.min(), rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


@pytest.mark.parametrize("seed", range(12))
def test_random_erasing_blanks_one_rectangle_and_changes_nothing_else(seed):
    face = drawn_face()
    always = AugmentSettings(erase_probability=1.0)
    plain = augment(face, np.random.default_rng(seed), 96)
    erased = augment(face, np.random.default_rng(seed), 96, always)
    mask = erased_mask(erased - plain)
    assert mask.any()
    top, left, height, width = bounding_box(mask)
    # the rectangle holds only the fill value (zero at the network input) ...
    assert torch.all(erased[:, top : top + height, left : left + width].abs() < 1e-6)
    # ... its size lies within the settings (pixels that already held the fill value
    # may make the visible change smaller, never larger) ...
    assert height * width <= 0.4 * 96 * 96 + 2 * 96
    # ... and every other pixel, with every other random decision, is the plain draw's
    outside = np.ones_like(mask)
    outside[top : top + height, left : left + width] = False
    assert torch.equal(erased[:, outside], plain[:, outside])


def test_random_erasing_rectangles_follow_the_area_and_aspect_ranges():
    from anime_face_id.transforms import erased_rectangle

    settings = AugmentSettings(erase_probability=1.0)
    rng = np.random.default_rng(0)
    rectangles = [erased_rectangle(200, rng, settings) for _ in range(400)]
    areas = np.array([h * w / 200**2 for _, _, h, w in rectangles])
    aspects = np.array([h / w for _, _, h, w in rectangles])
    assert all(
        top >= 0 and top + h <= 200 and left >= 0 and left + w <= 200
        for top, left, h, w in rectangles
    )
    assert areas.min() > 0.015 and areas.max() < 0.41
    assert aspects.min() < 0.5 and aspects.max() > 2.0  # both orientations occur
    assert abs(np.median(np.log(aspects))) < 0.3  # log-uniform: tall as often as wide


def test_random_erasing_never_happens_at_probability_zero_and_half_the_time_at_a_half():
    from anime_face_id.transforms import erased_rectangle

    rng = np.random.default_rng(1)
    never = AugmentSettings(erase_probability=0.0)
    assert all(erased_rectangle(64, rng, never) is None for _ in range(200))
    half = AugmentSettings(erase_probability=0.5)
    erased = sum(erased_rectangle(64, rng, half) is not None for _ in range(2000))
    assert 900 < erased < 1100


# ------------------------------------------------------------- lower resolution


def sharpness(image: torch.Tensor) -> float:
    """Mean squared difference between neighbouring pixels: fine detail."""
    return float(((image[:, 1:, :] - image[:, :-1, :]) ** 2).mean())


@pytest.mark.parametrize("seed", range(8))
def test_downscale_loses_detail_and_keeps_the_picture(seed):
    face = drawn_face()
    plain = augment(face, np.random.default_rng(seed), 96)
    low = augment(face, np.random.default_rng(seed), 96, AugmentSettings(downscale_probability=1.0))
    assert low.shape == plain.shape
    assert sharpness(low) < 0.9 * sharpness(plain)
    # the same drawing, blurred: colours and layout stay (mean per channel, coarse image)
    assert torch.allclose(low.mean(dim=(1, 2)), plain.mean(dim=(1, 2)), atol=0.05)
    coarse = torch.nn.functional.avg_pool2d
    assert float((coarse(low[None], 12) - coarse(plain[None], 12)).abs().mean()) < 0.1


def test_downscale_happens_at_its_probability_and_within_its_range():
    from anime_face_id.transforms import random_downscale

    square = letterbox(drawn_face(), 96)
    rng = np.random.default_rng(3)
    half = AugmentSettings(downscale_probability=0.5)
    changed = sum(
        not np.array_equal(random_downscale(square, rng, half), square) for _ in range(400)
    )
    assert 160 < changed < 240
    # the smallest allowed side still shows the face; a finer one keeps more detail
    coarse = AugmentSettings(downscale_probability=1.0, downscale_range=(0.3, 0.3))
    fine = AugmentSettings(downscale_probability=1.0, downscale_range=(0.9, 0.9))
    error = lambda s: np.abs(random_downscale(square, rng, s).astype(float) - square).mean()  # noqa: E731
    assert error(fine) < error(coarse)


# ------------------------------------------------------------- drawing style


def line_drawing(width: int) -> np.ndarray:
    """White paper with one dark vertical stroke ``width`` pixels wide, in colour."""
    image = np.full((32, 32, 3), 250, dtype=np.uint8)
    image[:, 16 - width // 2 : 16 - width // 2 + width] = (20, 30, 40)
    return image


def brute_force_morphology(image: np.ndarray, pick) -> np.ndarray:
    """Each pixel: ``pick`` (min or max) over itself and its 4 neighbours inside the image."""
    height, width = image.shape[:2]
    out = np.empty_like(image)
    for y in range(height):
        for x in range(width):
            near = [
                image[y + dy, x + dx]
                for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
                if 0 <= y + dy < height and 0 <= x + dx < width
            ]
            out[y, x] = pick(np.stack(near), axis=0)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_off_steps_draw_nothing_and_change_nothing(seed):
    """Recipes without drawing style or lower resolution keep every random draw they had."""
    from anime_face_id.transforms import random_downscale, random_style

    square = letterbox(drawn_face(), 96)
    rng = np.random.default_rng(seed)
    before = rng.bit_generator.state
    assert random_style(square, rng, AugmentSettings(style_probability=0.0)) is square
    assert random_downscale(square, rng, AugmentSettings(downscale_probability=0.0)) is square
    assert rng.bit_generator.state == before
    on = AugmentSettings(style_probability=0.5, downscale_probability=0.5)
    random_style(square, rng, on)
    random_downscale(square, rng, on)
    assert rng.bit_generator.state != before  # on, they draw (whatever the outcome)


@pytest.mark.parametrize("seed", range(3))
def test_line_weight_matches_a_brute_force_minimum_and_maximum_filter(seed):
    from anime_face_id.transforms import drawn_in_style

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (12, 14, 3)).astype(np.uint8)
    thick = drawn_in_style(image, "thicker_lines", 1.0)
    thin = drawn_in_style(image, "thinner_lines", 1.0)
    assert np.array_equal(thick, brute_force_morphology(image, np.min))
    assert np.array_equal(thin, brute_force_morphology(image, np.max))
    # milder strengths lie between the drawing and the full change
    mild = drawn_in_style(image, "thicker_lines", 0.0).astype(int)
    assert np.all((thick <= mild + 1) & (mild <= image.astype(int) + 1))


def test_strokes_get_wider_or_narrower_and_keep_their_colour():
    from anime_face_id.transforms import drawn_in_style

    def dark_columns(image: np.ndarray) -> int:
        return int((image[16, :, 0] < 128).sum())

    assert dark_columns(drawn_in_style(line_drawing(1), "thicker_lines", 1.0)) == 3
    assert dark_columns(drawn_in_style(line_drawing(3), "thinner_lines", 1.0)) == 1
    stroke = drawn_in_style(line_drawing(1), "thicker_lines", 1.0)[16, 16]
    assert tuple(stroke) == (20, 30, 40)


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0])
def test_flatter_tones_keep_few_levels_near_the_original(strength):
    from anime_face_id.transforms import drawn_in_style

    gradient = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    flat = drawn_in_style(gradient, "flatter_tones", strength)
    levels = {0.0: 8, 0.5: 6, 1.0: 3}[strength]
    assert len(np.unique(flat[..., 0])) == levels
    assert np.abs(flat.astype(int) - gradient).max() <= 256 / levels / 2 + 1
    assert np.all(np.diff(flat[0, :, 0].astype(int)) >= 0)  # the order of tones kept


def test_crisper_drawings_have_more_detail_and_the_same_layout():
    from anime_face_id.transforms import drawn_in_style

    square = letterbox(drawn_face(), 96)
    crisp = drawn_in_style(square, "crisper", 1.0)

    def detail(image: np.ndarray) -> float:
        return float(((image[:, 1:].astype(float) - image[:, :-1]) ** 2).mean())

    assert detail(crisp) > 1.5 * detail(square)
    assert abs(float(crisp.mean()) - float(square.mean())) < 3


def brute_force_colour_of_extreme_neighbour(image: np.ndarray, darkest: bool) -> np.ndarray:
    """Each pixel: the colour of the darkest (lightest) by BT.601 luma among itself and its
    4 neighbours inside the image, the first in (self, up, down, left, right) on a tie."""
    height, width = image.shape[:2]
    out = np.empty_like(image)
    for y in range(height):
        for x in range(width):
            best, best_grey = None, None
            for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
                if not (0 <= y + dy < height and 0 <= x + dx < width):
                    continue
                r, g, b = (float(v) for v in image[y + dy, x + dx])
                grey = 0.299 * r + 0.587 * g + 0.114 * b
                better = best_grey is None or (grey < best_grey if darkest else grey > best_grey)
                if better:
                    best, best_grey = image[y + dy, x + dx], grey
            out[y, x] = best
    return out


def chroma(image: np.ndarray) -> np.ndarray:
    """R - Y and B - Y per pixel (what YCbCr keeps besides the grey value)."""
    rgb = image.astype(float)
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    return np.stack([rgb[..., 0] - grey, rgb[..., 2] - grey], axis=-1)


@pytest.mark.parametrize("seed", range(3))
def test_hue_keeping_line_weight_moves_whole_colours_like_a_brute_force_filter(seed):
    from anime_face_id.transforms import drawn_in_style, drawn_in_style_keeping_hue

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (12, 14, 3)).astype(np.uint8)
    for style, darkest in (("thicker_lines", True), ("thinner_lines", False)):
        full = drawn_in_style_keeping_hue(image, style, 1.0)
        reference = brute_force_colour_of_extreme_neighbour(image, darkest)
        # at full strength 100% of the moved colour is blended in (within rounding)
        assert np.abs(full.astype(int) - reference).max() <= 1
    # a coloured stroke on coloured paper widens without a third colour where they meet
    paper = np.full((32, 32, 3), (240, 200, 120), dtype=np.uint8)
    paper[:, 16] = (30, 60, 160)
    thick = drawn_in_style_keeping_hue(paper, "thicker_lines", 1.0)
    assert {tuple(pixel) for pixel in thick.reshape(-1, 3)} == {(240, 200, 120), (30, 60, 160)}
    assert int((thick[16, :, 0] < 128).sum()) == 3
    per_channel = drawn_in_style(paper, "thicker_lines", 1.0)  # blue's 160 lost to paper's 120
    assert (30, 60, 120) in {tuple(pixel) for pixel in per_channel.reshape(-1, 3)}


@pytest.mark.parametrize("style", ["flatter_tones", "crisper"])
@pytest.mark.parametrize("strength", [0.0, 1.0])
def test_hue_keeping_tones_and_crispness_change_only_the_grey_value(style, strength):
    from anime_face_id.transforms import drawn_in_style, drawn_in_style_keeping_hue, grey_value

    square = letterbox(drawn_face(), 96)
    # mid tones, so no channel is pushed past 0 or 255 (where clipping would move hue)
    square = (64 + square.astype(int) // 2).astype(np.uint8)
    kept = drawn_in_style_keeping_hue(square, style, strength)
    assert np.abs(chroma(kept) - chroma(square)).max() <= 1.0
    assert np.abs(grey_value(kept) - grey_value(square)).max() > 5  # but it did change
    if style == "flatter_tones":
        levels = 8 - round(5 * strength)
        assert len(np.unique(np.round(grey_value(kept) * 2) / 2)) <= levels * 3  # few tones
    # the per-channel version moves the chroma
    moved = drawn_in_style(square, style, strength)
    assert np.abs(chroma(moved) - chroma(square)).max() > 5


def test_hue_keeping_style_is_chosen_by_the_setting_with_the_same_draws():
    from anime_face_id.transforms import (
        DRAWING_STYLES,
        drawn_in_style_keeping_hue,
        random_style,
    )

    square = letterbox(drawn_face(), 64)
    for seed in range(12):
        kept = random_style(
            square,
            np.random.default_rng(seed),
            AugmentSettings(style_probability=1.0, style_keeps_hue=True),
        )
        replay = np.random.default_rng(seed)
        replay.random()
        style = DRAWING_STYLES[int(replay.integers(len(DRAWING_STYLES)))]
        assert np.array_equal(
            kept, drawn_in_style_keeping_hue(square, style, float(replay.random()))
        )
    with pytest.raises(ValueError, match="unknown drawing style"):
        drawn_in_style_keeping_hue(square, "watercolour", 0.5)


def test_drawing_style_happens_at_its_probability_with_every_style():
    from anime_face_id.transforms import DRAWING_STYLES, drawn_in_style, random_style

    square = letterbox(drawn_face(), 64)
    rng = np.random.default_rng(5)
    half = AugmentSettings(style_probability=0.5)
    changed = sum(not np.array_equal(random_style(square, rng, half), square) for _ in range(400))
    assert 160 < changed < 240
    # every style is chosen: the output matches one of them redrawn at the drawn strength
    chosen = set()
    always = AugmentSettings(style_probability=1.0)
    for seed in range(40):
        styled = random_style(square, np.random.default_rng(seed), always)
        replay = np.random.default_rng(seed)
        replay.random()
        style = DRAWING_STYLES[int(replay.integers(len(DRAWING_STYLES)))]
        assert np.array_equal(styled, drawn_in_style(square, style, float(replay.random())))
        chosen.add(style)
    assert chosen == set(DRAWING_STYLES)
    with pytest.raises(ValueError, match="unknown drawing style"):
        drawn_in_style(square, "watercolour", 0.5)
