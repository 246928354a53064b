"""collect: search and download images for every character (DVC stage `collect`)."""

from __future__ import annotations

from prefect import flow
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from anime_face_id.collect import check_something_collected, prepare_collection
from flows._stage import fail_on_stage_error, load, run_stage
from tasks.collect import collect_character, write_outputs
from tasks.reporting import StageProgress, publish_summary


@flow(name="collect", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def collect_flow(params_path: str = "params.yaml", root: str = "."):
    return fail_on_stage_error(lambda: _collect(*load(root, params_path)))


def _collect(root_path, params) -> list[dict]:
    prepare_collection(root_path, params)
    slugs = params.slugs
    progress = StageProgress("collect", len(params.characters))
    futures = [
        collect_character.submit(root_path, character, slugs[character.name], params.collect)
        for character in params.characters
    ]
    results = {}
    for future in as_completed(futures):
        result = future.result()
        results[result.slug] = result
        progress.advance(result.character)
    rows = write_outputs(root_path, params)
    for row in rows:
        result = results.get(row["slug"])
        if result is not None:
            row.update(candidates=result.candidates, downloaded_now=result.fetched)
    publish_summary(
        "collect",
        rows,
        f"Images per character (backend {params.collect.backend}, limit {params.collect.limit})",
    )
    check_something_collected(list(results.values()), root_path)
    return rows


if __name__ == "__main__":
    run_stage("collect", collect_flow, distributes=True)
