"""Per-character work as Prefect tasks: the stage's core loop (``collect_all``, ``crop_all``)
takes a runner, and this one submits each character as a task on the flow's task runner
(threads, or a Dask cluster with ``compute.runner: dask``) and yields results as they finish."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from prefect.futures import PrefectFuture, as_completed

Job = TypeVar("Job")


def as_tasks(submit: Callable[[Job], PrefectFuture]) -> Callable[[list[Job]], Iterator[Any]]:
    """A character runner: ``submit(job)`` starts one task (e.g. ``task.submit(...)``)."""

    def run(jobs: list[Job]) -> Iterator[Any]:
        futures = [submit(job) for job in jobs]  # all submitted before the first wait
        for future in as_completed(futures):
            yield future.result()

    return run
