"""review: apply the human decisions to the crops (DVC stage `review`, a checkpoint)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from anime_face_id import review
from flows._stage import fail_on_stage_error, load, run_stage
from tasks.reporting import publish_summary


@task
def apply_review(root, params) -> review.ReviewSummary:
    return review.apply_review(root, params)


@flow(name="review", log_prints=True)
def review_flow(params_path: str = "params.yaml", root: str = "."):
    return fail_on_stage_error(lambda: _review(*load(root, params_path)))


def _review(root_path, params) -> list[dict]:
    summary = apply_review(root_path, params)
    for warning in summary.warnings:
        get_run_logger().warning(warning)
    publish_summary(
        "review",
        summary.rows,
        f"Review: {summary.curated} curated crops, {summary.pending} accepted while pending",
    )
    return summary.rows


if __name__ == "__main__":
    run_stage("review", review_flow, brief=True)
