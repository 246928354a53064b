"""What a stage shows in the Prefect UI: a progress bar, a summary table, log lines."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


def artifact_key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


# The environment variable carrying the pipeline run's tag into the stages it starts
# (tasks.dvc sets it, flows._stage tags the stage's flow run with it).
PIPELINE_TAG = "ANIME_FACE_ID_PIPELINE_TAG"


class StageProgress:
    """A progress artifact in the Prefect UI and a line in the terminal ("collect: 3 of 40
    characters done (last: Kise Ryota)"), advanced as units of work (characters) finish."""

    def __init__(self, stage: str, total: int, unit: str = "characters"):
        self.total = max(total, 1)
        self.done = 0
        self.unit = unit
        self._lock = threading.Lock()
        self._id = create_progress_artifact(
            progress=0.0,
            key=artifact_key(stage, "progress"),
            description=f"{stage}: 0 of {total} {unit} done",
        )
        self._stage = stage
        self._logger = get_run_logger()

    def advance(self, label: str = "") -> None:
        with self._lock:
            self.done += 1
            percent = 100.0 * self.done / self.total
            description = f"{self._stage}: {self.done} of {self.total} {self.unit} done" + (
                f" (last: {label})" if label else ""
            )
            update_progress_artifact(self._id, progress=percent, description=description)
            self._logger.info("%s", description)


def character_progress(stage: str, label: Callable[[Any], str]) -> Callable[[int, int, Any], None]:
    """A core-library per-character callback ``(done, total, result)``: the first call,
    ``(0, total, None)``, makes the stage's StageProgress (the core knows the total, so the
    flow need not count again); each later one advances it."""
    state: dict[str, StageProgress] = {}

    def advance(_done: int, total: int, result: Any) -> None:
        if "progress" not in state:
            state["progress"] = StageProgress(stage, total)
        if result is not None:
            state["progress"].advance(label(result))

    return advance


def log_progress(prefix: str, every: float = 0.1) -> Callable[[int, int], None]:
    """A core-library progress callback that logs roughly every 10 % of the work."""
    logger = get_run_logger()
    state = {"next": 0.0}

    def report(done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        if fraction >= state["next"] or done == total:
            logger.info("%s: %d/%d", prefix, done, total)
            state["next"] = fraction + every

    return report


def shown(value: Any, digits: int = 4) -> Any:
    """Floats as people read them (0.6111 rather than 0.6111111111111112); the files
    the stages write keep full precision."""
    if isinstance(value, float) and math.isfinite(value):
        return round(value, digits)
    return value


def display_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: shown(value) for key, value in row.items()} for row in rows]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table for the terminal that ran `dvc repro`."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    widths = {c: max(len(str(c)), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    line = "  ".join(str(c).ljust(widths[c]) for c in columns)
    body = ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join([line, "  ".join("-" * widths[c] for c in columns), *body])


def publish_summary(stage: str, rows: list[dict[str, Any]], description: str) -> None:
    """The stage's per-character table, as a Prefect artifact and in the log."""
    rows = display_rows(rows)
    create_table_artifact(table=rows, key=artifact_key(stage, "summary"), description=description)
    get_run_logger().info("%s\n%s", description, format_table(rows))
