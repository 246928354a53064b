"""crop: detect and crop the faces in every collected image (DVC stage `crop`)."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from anime_face_id.crop import crop_all, summary
from flows._stage import fail_on_stage_error, load, run_stage
from tasks.crop import crop_character, load_detector
from tasks.fanout import as_tasks
from tasks.reporting import character_progress, publish_summary


# One character at a time here (each already uses every core for its images); with
# compute.runner: dask, the characters spread over the cluster's workers.
@flow(name="crop", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def crop_flow(params_path: str = "params.yaml", root: str = "."):
    return fail_on_stage_error(lambda: _crop(*load(root, params_path)))


def _crop(root_path, params) -> list[dict]:
    config = params.crop
    load_detector(root_path, config)  # fetches the cascade (if used) before any character
    results = crop_all(
        root_path,
        config,
        run_characters=as_tasks(lambda job: crop_character.submit(root_path, *job, config)),
        on_character=character_progress("crop", lambda result: result.slug),
    )
    table = [asdict(result) for result in results]
    publish_summary(
        "crop", table, f"Faces per character (detector {config.detector}): {summary(results)}"
    )
    return table


if __name__ == "__main__":
    run_stage("crop", crop_flow, distributes=True)
