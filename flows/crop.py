"""crop: detect and crop the faces in every collected image (DVC stage `crop`)."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from anime_face_id.crop import raw_rows_by_character, summary
from flows._stage import fail_on_stage_error, load, run_stage
from tasks.crop import crop_character, load_detector, write_outputs
from tasks.reporting import StageProgress, publish_summary


# One character at a time here (each already uses every core for its images); with
# compute.runner: dask, the characters spread over the cluster's workers.
@flow(name="crop", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def crop_flow(params_path: str = "params.yaml", root: str = "."):
    return fail_on_stage_error(lambda: _crop(*load(root, params_path)))


def _crop(root_path, params) -> list[dict]:
    rows_by_slug = raw_rows_by_character(root_path)
    load_detector(root_path, params.crop)  # fetches the cascade (if used) before any character
    progress = StageProgress("crop", len(rows_by_slug))
    futures = [
        crop_character.submit(root_path, slug, rows, params.crop)
        for slug, rows in sorted(rows_by_slug.items())
    ]
    finished = {}
    for future in as_completed(futures):
        result = future.result()
        finished[result.slug] = result
        progress.advance(result.slug)
    results = [finished[slug] for slug in sorted(rows_by_slug)]
    write_outputs(root_path, results)
    table = [asdict(result) for result in results]
    publish_summary(
        "crop", table, f"Faces per character (detector {params.crop.detector}): {summary(results)}"
    )
    return table


if __name__ == "__main__":
    run_stage("crop", crop_flow, distributes=True)
