"""Box geometry: the crop holds exactly the region it claims, rows are rows, columns are
columns, and the square always stays inside the image."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from anime_face_id.faces.boxes import (
    crop_square,
    from_yolo,
    iou,
    matched,
    matched_truths,
    recall_by_width,
    square_crop_box,
)

WIDTH, HEIGHT = 300, 200  # deliberately not square: swapped axes go out of range or differ


def coordinate_image(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Every pixel spells its own position: R = column % 256, G = row, B = column // 256."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([cols % 256, rows, cols // 256], axis=-1).astype(np.uint8)


def positions(crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(columns, rows) of the source pixels a coordinate-image crop holds."""
    cols = crop[..., 0].astype(int) + 256 * crop[..., 2].astype(int)
    return cols, crop[..., 1].astype(int)


def patch_image(x: int, y: int, w: int, h: int) -> np.ndarray:
    """Grey noise with one solid magenta rectangle at columns x..x+w, rows y..y+h."""
    noise = np.random.default_rng(0).integers(60, 160, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    noise[y : y + h, x : x + w] = (255, 0, 255)
    return noise


# ------------------------------------------------------------- exact regions


def test_crop_holds_exactly_the_expected_source_pixels() -> None:
    box = (210, 40, 50, 50)  # right of the image's height: transposed indexing cannot reach it
    x, y, side = square_crop_box(box, WIDTH, HEIGHT, margin=0.0)
    assert (x, y, side) == (210, 40, 50)
    crop = crop_square(coordinate_image(), x, y, side, size=side)
    cols, rows = positions(crop)
    expected_rows, expected_cols = np.mgrid[40:90, 210:260]
    np.testing.assert_array_equal(cols, expected_cols)
    np.testing.assert_array_equal(rows, expected_rows)


def test_crop_of_a_known_patch_is_all_patch_with_no_margin() -> None:
    image = patch_image(x=180, y=60, w=64, h=64)
    x, y, side = square_crop_box((180, 60, 64, 64), WIDTH, HEIGHT, margin=0.0)
    crop = crop_square(image, x, y, side, size=64)
    assert (crop == np.array([255, 0, 255], dtype=np.uint8)).all()


def test_transposed_indexing_would_not_reproduce_the_crop() -> None:
    # The original project's bug, image[x:x+w, y:y+h], run on the same box.
    image = patch_image(x=150, y=20, w=40, h=40)
    x, y, side = square_crop_box((150, 20, 40, 40), WIDTH, HEIGHT, margin=0.0)
    right = crop_square(image, x, y, side, size=side)
    transposed = image[x : x + side, y : y + side]
    assert right.shape == transposed.shape
    assert not np.array_equal(right, transposed)


def test_margin_widens_on_each_side_and_keeps_the_face_centred() -> None:
    x, y, side = square_crop_box((130, 80, 40, 40), WIDTH, HEIGHT, margin=0.25)
    assert (x, y, side) == (120, 70, 60)
    image = patch_image(x=130, y=80, w=40, h=40)
    crop = crop_square(image, x, y, side, size=side)
    magenta = (crop == np.array([255, 0, 255], dtype=np.uint8)).all(axis=-1)
    assert magenta[10:50, 10:50].all()
    assert magenta.sum() == 40 * 40  # the 10-pixel ring around it is background


def test_non_square_box_becomes_a_square_on_its_longer_side() -> None:
    x, y, side = square_crop_box((100, 50, 30, 60), WIDTH, HEIGHT, margin=0.0)
    assert side == 60
    assert (x, y) == (85, 50)  # centred horizontally on the 30-pixel-wide box


def test_output_is_square_at_the_requested_size() -> None:
    image = coordinate_image()
    x, y, side = square_crop_box((100, 60, 50, 70), WIDTH, HEIGHT, margin=0.4)
    for size in (32, 256):
        crop = crop_square(image, x, y, side, size)
        assert crop.shape == (size, size, 3)
        assert crop.dtype == np.uint8


def test_resized_crop_still_comes_from_the_right_place() -> None:
    image = coordinate_image()
    # columns 20..99 and rows 110..189: averaging while resizing stays within the range
    # (a region crossing column 256 would blend the R/B encoding)
    crop = crop_square(image, 20, 110, 80, size=16)
    cols, rows = positions(crop)
    assert cols.min() >= 20 and cols.max() < 100
    assert rows.min() >= 110 and rows.max() < 190
    assert cols[0, 0] < cols[0, -1] and rows[0, 0] < rows[-1, 0]  # columns run across


# ------------------------------------------------------------- borders


@pytest.mark.parametrize(
    ("box", "margin", "expected"),
    [
        ((0, 80, 40, 40), 0.25, (0, 70, 60)),  # left border: shifted right, not shrunk
        ((270, 80, 30, 40), 0.25, (240, 70, 60)),  # right border: shifted left
        ((130, 0, 40, 40), 0.25, (120, 0, 60)),  # top border
        ((130, 170, 40, 30), 0.25, (120, 140, 60)),  # bottom border
        ((0, 0, 40, 40), 0.25, (0, 0, 60)),  # top-left corner
        ((270, 170, 30, 30), 0.5, (240, 140, 60)),  # bottom-right corner
    ],
)
def test_clipping_at_each_border_shifts_the_square_inside(box, margin, expected) -> None:
    x, y, side = square_crop_box(box, WIDTH, HEIGHT, margin)
    assert (x, y, side) == expected
    assert x >= 0 and x + side <= WIDTH and y >= 0 and y + side <= HEIGHT
    crop = crop_square(coordinate_image(), x, y, side, size=side)
    cols, rows = positions(crop)
    assert cols.min() == x and cols.max() == x + side - 1
    assert rows.min() == y and rows.max() == y + side - 1


def test_square_larger_than_the_image_shrinks_to_the_short_side() -> None:
    x, y, side = square_crop_box((50, 20, 200, 160), WIDTH, HEIGHT, margin=0.4)
    assert side == HEIGHT
    assert y == 0 and 0 <= x <= WIDTH - HEIGHT
    assert x == 50  # centred on the box: 50 + (200 - 200) // 2


def test_whole_image_box_gives_the_centre_square() -> None:
    assert square_crop_box((0, 0, WIDTH, HEIGHT), WIDTH, HEIGHT, margin=0.4) == (50, 0, 200)
    assert square_crop_box((0, 0, 120, 300), 120, 300, margin=0.0) == (0, 90, 120)


def test_crop_square_refuses_a_square_outside_the_image() -> None:
    image = coordinate_image()
    with pytest.raises(ValueError, match="not inside"):
        crop_square(image, 250, 10, 60, 32)
    with pytest.raises(ValueError, match="not inside"):
        crop_square(image, 10, 150, 60, 32)


def test_degenerate_boxes_are_refused() -> None:
    with pytest.raises(ValueError, match="no area"):
        square_crop_box((10, 10, 0, 5), WIDTH, HEIGHT, 0.1)
    with pytest.raises(ValueError, match="outside"):
        square_crop_box((400, 10, 20, 20), WIDTH, HEIGHT, 0.1)


# ------------------------------------------------------------- properties


@st.composite
def image_and_box(draw):
    width = draw(st.integers(1, 1500))
    height = draw(st.integers(1, 1500))
    x = draw(st.integers(0, width - 1))
    y = draw(st.integers(0, height - 1))
    w = draw(st.integers(1, width - x))
    h = draw(st.integers(1, height - y))
    return width, height, (x, y, w, h)


margins = st.floats(0.0, 2.0, allow_nan=False)


@given(image_and_box(), margins)
def test_square_is_always_inside_the_image(case, margin) -> None:
    width, height, box = case
    x, y, side = square_crop_box(box, width, height, margin)
    assert side >= 1
    assert x >= 0 and x + side <= width
    assert y >= 0 and y + side <= height
    assert side <= min(width, height)


@given(image_and_box(), margins)
def test_square_contains_the_box_when_it_fits(case, margin) -> None:
    width, height, (bx, by, bw, bh) = case
    x, y, side = square_crop_box((bx, by, bw, bh), width, height, margin)
    if max(bw, bh) <= min(width, height):
        assert x <= bx and bx + bw <= x + side
        assert y <= by and by + bh <= y + side


@given(image_and_box(), margins)
def test_square_has_the_widened_side_when_that_fits(case, margin) -> None:
    width, height, (bx, by, bw, bh) = case
    _, _, side = square_crop_box((bx, by, bw, bh), width, height, margin)
    widened = max(bw, bh) * (1 + 2 * margin)
    if widened <= min(width, height) - 1:
        assert widened - 1e-6 <= side < widened + 1


@given(image_and_box(), margins)
def test_crop_square_accepts_every_square_it_is_given(case, margin) -> None:
    width, height, box = case
    x, y, side = square_crop_box(box, width, height, margin)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    assert crop_square(image, x, y, side, 16).shape == (16, 16, 3)


# ------------------------------------------------------------- iou and matching


def test_iou_values() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 4, 4), (1, 1, 2, 2)) == pytest.approx(4 / 16)


@given(
    st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(1, 50), st.integers(1, 50)),
    st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(1, 50), st.integers(1, 50)),
)
def test_iou_is_symmetric_and_bounded(a, b) -> None:
    assert iou(a, b) == pytest.approx(iou(b, a))
    assert 0.0 <= iou(a, b) <= 1.0


def test_from_yolo_converts_a_normalised_centre_box() -> None:
    assert from_yolo(0.5, 0.25, 0.2, 0.1, 300, 200) == pytest.approx((120, 40, 60, 20))


def test_one_detection_matches_one_face_only() -> None:
    truths = [(0, 0, 10, 10), (1, 0, 10, 10)]
    assert matched(truths, [(0, 0, 10, 10)]) == 1
    assert matched(truths, [(0, 0, 10, 10), (1, 0, 10, 10)]) == 2
    assert matched(truths, [(50, 50, 10, 10)]) == 0


small_boxes = st.tuples(
    st.integers(0, 80), st.integers(0, 80), st.integers(1, 60), st.integers(1, 60)
)


@given(
    st.lists(
        st.tuples(st.lists(small_boxes, max_size=5), st.lists(small_boxes, max_size=5)),
        max_size=4,
    )
)
def test_recall_by_width_counts_every_face_once_in_its_band(pictures) -> None:
    """Against a brute-force count: each labelled face falls in exactly one band by its
    width, and a band's hits are the faces ``matched`` counts, band by band."""
    edges = (10, 25, 40)
    bands = recall_by_width(pictures, edges)
    assert len(bands) == len(edges) + 1
    assert sum(total for _, total in bands) == sum(len(truths) for truths, _ in pictures)
    assert sum(hits for hits, _ in bands) == sum(matched(t, f) for t, f in pictures)
    bounds = [0, *edges, float("inf")]
    for band, (hits, total) in enumerate(bands):
        inside = [
            (truth, index in matched_truths(truths, found))
            for truths, found in pictures
            for index, truth in enumerate(truths)
            if bounds[band] <= truth[2] < bounds[band + 1]
        ]
        assert total == len(inside)
        assert hits == sum(hit for _, hit in inside)


def test_recall_by_width_puts_a_missed_small_face_in_the_first_band() -> None:
    truths = [(0, 0, 8, 8), (50, 50, 50, 50)]
    assert recall_by_width([(truths, [(50, 50, 50, 50)])], (30,)) == [(0, 1), (1, 1)]
