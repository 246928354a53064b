"""Decoding pictures nobody vetted: the only outcomes are an upright RGB image or the
project's rejection with a reason, and memory stays bounded per decode and per process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anime_face_id.fileio import UnreadableFile, read_regular_file
from anime_face_id.imaging import (
    ImageRejected,
    decode,
    decode_cost,
    inspect,
    load_rgb,
    load_rgb_array,
)
from anime_face_id.memory import MemoryBudget
from tests.test_identify import corrupt_exif_webp

REPO = Path(__file__).resolve().parents[1]
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF")


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def seed_pictures(rng: np.random.Generator) -> list[bytes]:
    """Small valid pictures of every kept format and the modes that take other code
    paths (alpha, palette, grey, 16-bit, EXIF orientation)."""
    pixels = rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)
    rgb = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: makes decode read and apply the EXIF block
    seeds = [encoded(rgb, fmt) for fmt in FORMATS]
    seeds += [
        encoded(rgb, "JPEG", exif=exif.tobytes()),
        encoded(rgb, "WEBP", exif=exif.tobytes()),
        encoded(rgb, "PNG", exif=exif.tobytes()),
        encoded(rgb.convert("RGBA"), "PNG"),
        encoded(rgb.convert("P"), "GIF", transparency=0),
        encoded(rgb.convert("L"), "TIFF"),
        encoded(Image.fromarray(pixels[..., 0].astype(np.uint16) * 257), "PNG"),
        encoded(rgb.convert("CMYK"), "JPEG"),
    ]
    return seeds


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One of the ways files arrive broken: flipped bytes, cut short, bytes inserted or
    repeated, a chunk overwritten with extreme values."""
    buffer = bytearray(data)
    kind = rng.integers(0, 5)
    if kind == 0:
        for _ in range(rng.integers(1, 8)):
            buffer[rng.integers(0, len(buffer))] = rng.integers(0, 256)
    elif kind == 1:
        del buffer[rng.integers(1, len(buffer)) :]
    elif kind == 2:
        at = rng.integers(0, len(buffer))
        buffer[at:at] = rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8).tobytes()
    elif kind == 3:
        start = rng.integers(0, len(buffer))
        buffer[start:start] = buffer[start : start + rng.integers(1, 128)]
    else:
        start = rng.integers(0, max(1, len(buffer) - 4))
        buffer[start : start + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00"])
    return bytes(buffer)


def test_decode_fuzz_yields_an_image_or_a_reason_and_nothing_else() -> None:
    rng = np.random.default_rng(20261130)
    seeds = seed_pictures(rng)
    outcomes = {"decoded": 0, "rejected": 0}
    for number in range(4000):
        data = mutate(seeds[number % len(seeds)], rng)
        try:
            image, fmt = decode(data)
        except ImageRejected as rejection:
            assert rejection.reason.strip(), data[:32]
            outcomes["rejected"] += 1
            continue
        except Exception as error:  # the regression: anything else escaping
            pytest.fail(f"input {number} ({data[:16]!r}...) escaped as {error!r}")
        assert image.mode == "RGB" and image.width > 0 and image.height > 0
        assert fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF")
        outcomes["decoded"] += 1
    # both outcomes must really happen, or the mutations test nothing
    assert outcomes["decoded"] > 200 and outcomes["rejected"] > 200, outcomes


@pytest.mark.parametrize("fmt", ["WEBP", "PNG"])
def test_a_corrupt_exif_block_is_a_rejection(fmt: str) -> None:
    data = (
        corrupt_exif_webp()
        if fmt == "WEBP"
        else encoded(Image.new("RGB", (8, 8)), "PNG", exif=b"garbage!" * 4)
    )
    with pytest.raises(ImageRejected, match="corrupt image: SyntaxError"):
        decode(data)


def test_a_phone_jpeg_with_more_frames_mpo_is_a_jpeg() -> None:
    """Ultra HDR and 3D-camera JPEGs carry an MPF segment, which Pillow reads as MPO; the
    first frame is the picture."""
    buffer = io.BytesIO()
    first, gain_map = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (32, 24), "blue")
    first.save(buffer, format="MPO", save_all=True, append_images=[gain_map])
    info = inspect(buffer.getvalue())
    assert (info.format, info.extension, info.width, info.height) == ("MPO", "jpg", 64, 48)
    rgb, _ = decode(buffer.getvalue())
    assert rgb.getpixel((10, 10))[0] > 200


def test_sixteen_bit_grey_keeps_its_scale() -> None:
    values = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    image, _ = decode(encoded(Image.fromarray(values), "PNG"))
    assert np.asarray(image)[0, :, 0].tolist() == [0, 1, 255, 128]


def flat_sixteen_bit_png(side: int) -> bytes:
    """A few dozen kilobytes on the wire, ``side``^2 16-bit pixels once decoded."""
    values = np.zeros((side, side), dtype=np.uint16)
    values[::97] = 40000
    return encoded(Image.fromarray(values), "PNG")


def test_a_picture_that_would_take_too_much_memory_is_refused_before_decoding() -> None:
    data = flat_sixteen_bit_png(2000)
    assert len(data) < 50_000
    header = Image.open(io.BytesIO(data))
    cost = decode_cost(header)
    with pytest.raises(ImageRejected, match=r"too much memory: decoding 2000x2000 I;16"):
        decode(data, max_memory=cost - 1)
    image, _ = decode(data, max_memory=cost)
    assert image.size == (2000, 2000)


MEASURE = """
import json, resource, sys
from pathlib import Path
from anime_face_id.imaging import decode
data = Path(sys.argv[1]).read_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image, _ = decode(data)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_growth": (after - before) * 1024, "size": image.size}))
"""


@pytest.mark.slow
def test_a_bomb_sized_sixteen_bit_picture_decodes_within_its_memory_bound(tmp_path) -> None:
    """The 6000 x 6000 16-bit PNG of the issue (80 KB, under max_pixels) took ~1 GB to
    decode; its peak must stay under the bound decode computes for it."""
    data = flat_sixteen_bit_png(6000)
    picture = tmp_path / "bomb.png"
    picture.write_bytes(data)
    bound = decode_cost(Image.open(io.BytesIO(data)))
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(picture)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        timeout=300,
    )
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["size"] == [6000, 6000]
    assert measured["peak_growth"] <= bound, (measured, bound)
    assert bound < 512 * 2**20


def test_concurrent_reservations_wait_for_room_in_the_budget() -> None:
    budget = MemoryBudget(total=100)
    order: list[str] = []
    with budget.reserve(70):
        waiter = threading.Thread(target=lambda: _reserve_and_log(budget, 50, order))
        waiter.start()
        time.sleep(0.2)
        assert order == []  # 70 + 50 > 100: it waits
        order.append("first released")
    waiter.join(timeout=5)
    assert order == ["first released", "second reserved"]
    with budget.reserve(500):  # larger than the pool: granted when the pool is idle
        assert budget.in_use == 500
    assert budget.in_use == 0


def _reserve_and_log(budget: MemoryBudget, size: int, order: list[str]) -> None:
    with budget.reserve(size):
        order.append("second reserved")


@pytest.mark.timeout(20)
def test_bounded_reads_refuse_pipes_and_devices_without_blocking(tmp_path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UnreadableFile, match="named pipe"):
        read_regular_file(tmp_path / "pipe", 1000)  # would block for ever on open/read
    (tmp_path / "zeros").symlink_to("/dev/zero")
    with pytest.raises(UnreadableFile, match="character device"):
        read_regular_file(tmp_path / "zeros", 1000)
    with pytest.raises(UnreadableFile, match="directory"):
        read_regular_file(tmp_path, 1000)
    with pytest.raises(UnreadableFile, match="file not found"):
        read_regular_file(tmp_path / "absent", 1000)
    (tmp_path / "big").write_bytes(b"x" * 1001)
    with pytest.raises(UnreadableFile, match="too large: 1001 bytes"):
        read_regular_file(tmp_path / "big", 1000)
    (tmp_path / "ok").write_bytes(b"x" * 1000)
    assert read_regular_file(tmp_path / "ok", 1000) == b"x" * 1000


@pytest.mark.timeout(20)
def test_pictures_named_by_the_stage_tables_are_read_bounded(tmp_path) -> None:
    """load_rgb serves review, training, the apps: a pipe or a device named in a table
    is refused, not read for ever."""
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ImageRejected, match="cannot read: not a regular file: a named pipe"):
        load_rgb_array(tmp_path / "pipe.png")
    (tmp_path / "zeros.png").symlink_to("/dev/zero")
    with pytest.raises(ImageRejected, match="character device"):
        load_rgb(tmp_path / "zeros.png")
    with pytest.raises(ImageRejected, match="cannot read: file not found"):
        load_rgb(tmp_path / "absent.png")


@pytest.mark.timeout(20)
def test_the_folder_backend_rejects_a_pipe_or_device_instead_of_hanging(tmp_path) -> None:
    from anime_face_id.download import FetchRejected, read_local_file

    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(FetchRejected, match="cannot read file: not a regular file: a named"):
        read_local_file(tmp_path / "pipe.jpg", 1000)
    (tmp_path / "zeros.jpg").symlink_to("/dev/zero")
    with pytest.raises(FetchRejected, match="character device"):
        read_local_file(tmp_path / "zeros.jpg", 1000)
