"""split: train/val/test per character, near-duplicates on one side (DVC stage `split`)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from anime_face_id import split
from flows._stage import fail_on_stage_error, load, run_stage
from tasks.reporting import publish_summary


@task
def split_dataset(root, config) -> split.SplitSummary:
    return split.split_dataset(root, config)


@flow(name="split", log_prints=True)
def split_flow(params_path: str = "params.yaml", root: str = "."):
    return fail_on_stage_error(lambda: _split(*load(root, params_path)))


def _split(root_path, params) -> list[dict]:
    summary = split_dataset(root_path, params.split)
    for warning in summary.warnings:
        get_run_logger().warning(warning)
    publish_summary("split", summary.rows, "Crops per split and character")
    return summary.rows


if __name__ == "__main__":
    run_stage("split", split_flow, brief=True)
