"""Crop tasks: get the detector (may download the cascade), then crop per character."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from anime_face_id import crop
from anime_face_id.config import CropConfig
from anime_face_id.faces.detectors import process_detector
from tasks.reporting import log_progress


@task(retries=2, retry_delay_seconds=10)
def load_detector(root: Path, config: CropConfig):
    """May fetch the cascade file over the network, hence the retries."""
    return process_detector(Path(root), config)


@task(task_run_name="crop-{slug}")
def crop_character(root: Path, slug: str, rows: list[dict], config: CropConfig):
    detector = process_detector(Path(root), config)
    return crop.crop_character(root, slug, rows, config, detector, log_progress(f"{slug} crops"))
