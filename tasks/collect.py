"""Collect tasks: a retryable search per character, then its downloads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect import get_run_logger, task

from anime_face_id import collect
from anime_face_id.config import Character, CollectConfig
from anime_face_id.errors import EngineRefused
from anime_face_id.sources import SearchError
from tasks.reporting import log_progress

WEB_BACKENDS = {"google", "duckduckgo", "booru"}


def _not_refused(task, task_run, state) -> bool:
    """Retry a failed search unless the engine refused to search at all: asking again
    within a minute does not lift a rate limit or a captcha."""
    return not isinstance(state.result(raise_on_failure=False), EngineRefused)


@task(
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=_not_refused,
    task_run_name="search-{slug}",
)
def search(
    character: Character, slug: str, config: CollectConfig, root: Path | None = None
) -> collect.Found:
    """Network I/O, so retried; raises SearchError when the backend finds nothing usable."""
    return collect.find_candidates(character, slug, config, root=root)


def _reported(attempt: Callable[..., collect.Found]) -> Callable[..., collect.Found]:
    """``attempt``, with a failed search logged as one line: collect records it as a
    reject and goes on, so it is news, not a crash (no traceback)."""

    def reported(character: Character, slug: str, config: CollectConfig, root=None):
        try:
            return attempt(character, slug, config, root=root)
        except EngineRefused:
            raise  # it stops the stage, which says so once
        except SearchError as error:
            get_run_logger().warning("%s: recorded as a reject: %s", character.name, error)
            raise

    return reported


@task(task_run_name="collect-{slug}")
def collect_character(
    root: Path, character: Character, slug: str, config: CollectConfig
) -> collect.CharacterCollectResult:
    # Only web searches are worth a retrying task of their own; a missing folder or CSV
    # row stays missing, and a task that fails logs a traceback however expected it was.
    attempt = search if config.backend in WEB_BACKENDS else collect.find_candidates
    result = collect.collect_character(
        root,
        character,
        slug,
        config,
        search=_reported(attempt),
        progress=log_progress(f"{character.name} downloads"),
    )
    get_run_logger().info(
        "%s: %s, %d kept, %d rejected, %d downloaded now",
        character.name,
        "already collected, skipped" if result.skipped else f"{result.candidates} candidates",
        result.kept,
        result.rejected,
        result.fetched,
    )
    return result
