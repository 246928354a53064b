"""Collect tasks: a retryable search per character, then its downloads."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from anime_face_id import collect
from anime_face_id.config import Character, CollectConfig
from anime_face_id.sources import SearchError
from tasks.reporting import log_progress


@task(retries=2, retry_delay_seconds=[10, 60], task_run_name="search-{slug}")
def search(character: Character, slug: str, config: CollectConfig) -> list[str]:
    """Network I/O, so retried; the backend raises SearchError when it finds nothing usable."""
    return collect.find_candidates(character, slug, config)


@task(task_run_name="collect-{slug}")
def collect_character(
    root: Path, character: Character, slug: str, config: CollectConfig
) -> collect.CharacterCollectResult:
    logger = get_run_logger()
    if collect.is_collected(root, character, slug, config):
        logger.info("%s: already collected with these settings, skipped", character.name)
        return collect.fetch_candidates(root, character, slug, config, [], None)
    try:
        candidates = search(character, slug, config)
    except SearchError as error:
        logger.warning("%s: search failed: %s", character.name, error)
        return collect.record_search_failure(
            root, character, slug, config, f"search failed: {error}"
        )
    logger.info("%s: %d candidate images", character.name, len(candidates))
    return collect.fetch_candidates(
        root, character, slug, config, candidates, log_progress(f"{character.name} downloads")
    )


@task
def write_outputs(root: Path, params) -> list[dict]:
    return collect.write_collect_outputs(root, params)
