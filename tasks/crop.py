"""Crop tasks: get the detector (may download the cascade), then crop per character."""

from __future__ import annotations

import functools
from pathlib import Path

from prefect import task

from anime_face_id import crop
from anime_face_id.config import CropConfig
from tasks.reporting import log_progress


@functools.lru_cache(maxsize=4)
def _detector(root: Path, config: CropConfig):
    # once per process: the flow's, or each Dask worker's (a detector is not sent over
    # the network; the cascade's OpenCV object could not be)
    return crop.load_detector(root, config)


@task(retries=2, retry_delay_seconds=10)
def load_detector(root: Path, config: CropConfig):
    """May fetch the cascade file over the network, hence the retries."""
    return _detector(Path(root), config)


@task(task_run_name="crop-{slug}")
def crop_character(root: Path, slug: str, rows: list[dict], config: CropConfig):
    detector = _detector(Path(root), config)
    return crop.crop_character(root, slug, rows, config, detector, log_progress(f"{slug} crops"))


@task
def write_outputs(root: Path, results: list) -> None:
    crop.write_crop_outputs(root, results)
