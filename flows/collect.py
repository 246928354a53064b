"""collect: search and download images for every character (DVC stage `collect`)."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from anime_face_id.collect import collect_all
from flows._stage import fail_on_stage_error, load, run_stage
from tasks.collect import collect_character
from tasks.fanout import as_tasks
from tasks.reporting import character_progress, publish_summary


@flow(name="collect", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def collect_flow(params_path: str = "params.yaml", root: str = "."):
    return fail_on_stage_error(lambda: _collect(*load(root, params_path)))


def _collect(root_path, params) -> list[dict]:
    config = params.collect
    table: list[dict] = []

    def report(rows: list[dict]) -> None:
        table.extend(rows)
        publish_summary(
            "collect",
            rows,
            f"Images per character (backend {config.backend}, limit {config.limit})",
        )

    collect_all(
        root_path,
        params,
        progress=character_progress("collect", lambda result: result.character),
        run_characters=as_tasks(lambda job: collect_character.submit(root_path, *job, config)),
        report=report,
    )
    return table


if __name__ == "__main__":
    run_stage("collect", collect_flow, distributes=True)
