"""crop: detect and crop the faces in every collected image (DVC stage `crop`)."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from anime_face_id.crop import raw_rows_by_character, summary
from flows._stage import fail_on_stage_error, load, run_stage
from tasks.crop import crop_character, load_detector, write_outputs
from tasks.reporting import StageProgress, publish_summary


@flow(name="crop", log_prints=True)
def crop_flow(params_path: str = "params.yaml", root: str = "."):
    return fail_on_stage_error(lambda: _crop(*load(root, params_path)))


def _crop(root_path, params) -> list[dict]:
    rows_by_slug = raw_rows_by_character(root_path)
    detector = load_detector(root_path, params.crop)
    progress = StageProgress("crop", len(rows_by_slug))
    results = []
    # Characters one after another: each already uses every core for its images.
    for slug, rows in sorted(rows_by_slug.items()):
        results.append(crop_character(root_path, slug, rows, params.crop, detector))
        progress.advance(slug)
    write_outputs(root_path, results)
    table = [asdict(result) for result in results]
    publish_summary(
        "crop", table, f"Faces per character (detector {params.crop.detector}): {summary(results)}"
    )
    return table


if __name__ == "__main__":
    run_stage("crop", crop_flow)
