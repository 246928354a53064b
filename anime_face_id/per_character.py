"""A stage's characters run by a pluggable runner: the stage's core loop (``collect_all``,
``crop_all``) hands its per-character jobs to a runner that yields each result as it
finishes, in any order (one after another by default; the Prefect flows submit each
character as a task), and gets them back in the jobs' order."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar


class HasSlug(Protocol):
    slug: str


Job = TypeVar("Job")
Result = TypeVar("Result", bound=HasSlug)
Runner = Callable[[list[Job]], Iterable[Result]]
OnCharacter = Callable[[int, int, Any], None]


def run_in_order(
    run: Runner,
    jobs: list[Job],
    slug_of: Callable[[Job], str],
    on_character: OnCharacter | None = None,
) -> list[Result]:
    """The results of ``run(jobs)`` in the order of ``jobs``. ``on_character`` is called
    with (0, characters in all, None) first, then as each character finishes with
    (characters done, characters in all, its result)."""
    finished: dict[str, Result] = {}
    if on_character:
        on_character(0, len(jobs), None)
    for result in run(jobs):
        finished[result.slug] = result
        if on_character:
            on_character(len(finished), len(jobs), result)
    return [finished[slug_of(job)] for job in jobs]
