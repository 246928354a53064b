"""The whole pipeline as one Prefect flow: `dvc repro`, with a review sign-off in the UI.

    python -m flows.pipeline                     # run once
    python -m flows.pipeline --serve --cron "0 3 * * 1"   # serve it on a schedule

Each DVC stage is a task of this flow (`dvc repro --single-item <stage>`, in dvc.yaml's
order), linked to the stage's own flow run. When crops await review (and
review.require_complete is true) the flow pauses and the Prefect UI shows a form with the
counts and a link to the review app. The reviewer reviews, then signs off there (optionally
accepting whatever is still pending); the flow resumes and runs the remaining stages. It
reports to the configured Prefect server, else to the project's own (flows.server), started
when needed; without any server to resume from, it stops at review like `dvc repro`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Failed

from anime_face_id import review
from anime_face_id.errors import StageError
from anime_face_id.review_plan import plan_review
from flows._stage import check_params, fail_on_stage_error, finish, load, report_stops_once
from flows.server import ensure_server
from tasks.dvc import dvc_repro_stage, stage_names


class ReviewSignOff(RunInput):
    """What the reviewer answers in the Prefect UI to let the pipeline go on."""

    reviewer: str = ""
    accept_pending: bool = False  # accept every crop still without a decision
    note: str = ""


def sign_off_form(
    summary: review.ReviewSummary, blocker: review.ReviewIncomplete, app_url: str
) -> str:
    lines = [
        "## Review the face crops",
        "",
        f"**{blocker.pending} of {blocker.total}** crops await review. "
        f"Open the review app: [{app_url}]({app_url}) (`make review`).",
        "",
        "| character | crops | accepted | rejected | pending |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in summary.rows:
        lines.append(
            f"| {row['character']} | {row.get('crops', '')} | {row.get('accepted', '')} "
            f"| {row.get('rejected', '')} | {row.get('pending', '')} |"
        )
    lines += [
        "",
        "Sign off when you are done. Tick **accept_pending** to accept the crops still pending;",
        "otherwise the run stops if any remain.",
    ]
    return "\n".join(lines)


def wait_for_review(root, params_path: str) -> str | None:
    """None when review is complete (or signed off); otherwise why the run must stop."""
    logger = get_run_logger()
    _, params = load(str(root), params_path)
    if not params.review.require_complete:
        return None
    plan = plan_review(root, params)
    blocker = review.review_blocker(plan)
    if blocker is None:
        return None
    if not PREFECT_API_URL.value():
        return str(blocker)  # nobody could resume this run: stop like `dvc repro` does
    summary = review.review_status(root, params)
    form = ReviewSignOff.with_initial_data(
        description=sign_off_form(summary, blocker, params.review.app.url)
    )
    logger.info("%s Waiting for a sign-off in the Prefect UI.", blocker)
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=params.review.signoff.timeout_s)
    except FlowPauseTimeout:
        # The server may already have failed the run ("never resumed"); say why in the log.
        message = (
            f"no review sign-off within {params.review.signoff.timeout_s} s; nothing was applied. "
            "Decisions made so far are kept: run `.venv/bin/python -m flows.pipeline` again to pick up "
            "where review left off."
        )
        logger.error(message)
        return message
    who = answer.reviewer or "the reviewer"
    if answer.accept_pending:
        accepted = review.accept_pending(root, params, note=f"accepted at sign-off by {who}")
        logger.info("%s signed off; %d pending crops accepted", who, accepted)
        return None
    still = review.review_blocker(plan_review(root, params))
    if still is not None:
        return f"signed off by {who} with crops still pending. {still}"
    logger.info("%s signed off; every crop has a decision", who)
    return None


@flow(name="pipeline", log_prints=True)
def pipeline_flow(params_path: str = "params.yaml", root: str = ".", until: str = "all"):
    """``until``: the last stage to bring up to date (a dvc.yaml stage), or all of them."""
    return fail_on_stage_error(lambda: _pipeline(params_path, root, until))


def _pipeline(params_path: str, root: str, until: str):
    """Each stage as a task of its own, in dvc.yaml's order: those before review, the
    review sign-off, then the rest up to ``until``."""
    root_path, _ = load(root, params_path)
    stages = stage_names(root_path)
    if until != "all" and until not in stages:
        raise StageError(f"--until {until!r} is not a stage of dvc.yaml ({', '.join(stages)})")
    last = stages.index(until) if until != "all" else len(stages) - 1
    tag = f"pipeline:{flow_run.id}"
    review_at = stages.index("review")
    for stage in stages[: min(review_at, last + 1)]:
        dvc_repro_stage(root_path, stage, tag)
    if last >= review_at:
        stop = wait_for_review(root_path, params_path)
        if stop is not None:
            return Failed(message=stop)
    for stage in stages[review_at : last + 1]:
        dvc_repro_stage(root_path, stage, tag)
    return f"pipeline complete ({until})"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.pipeline", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--root", default=".")
    parser.add_argument(
        "--serve", action="store_true", help="serve as a deployment (needs a Prefect server)"
    )
    parser.add_argument(
        "--cron", default=None, help='schedule for --serve, e.g. "0 3 * * 1" (Mondays 03:00)'
    )
    parser.add_argument("--name", default="anime-face-id", help="deployment name for --serve")
    parser.add_argument(
        "--until", default="all", help="last stage to run, e.g. balance (default: all)"
    )
    args = parser.parse_args()
    try:
        check_params(Path(args.root) / args.params)
        # One long-lived server (the configured one, else the project's): the run and its
        # stages stay in the UI, and the sign-off at review has somewhere to happen.
        api_url = ensure_server(Path(args.root))
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            _run(args)
    except KeyboardInterrupt:  # a stage and DVC got it too, and stopped
        print(
            "pipeline: stopped by Ctrl-C; the next run goes on from the stage it stopped in",
            file=sys.stderr,
        )
        raise SystemExit(130) from None


def _run(args: argparse.Namespace) -> None:
    if args.serve:
        pipeline_flow.serve(
            name=args.name,
            cron=args.cron,
            parameters={
                "params_path": args.params,
                "root": str(Path(args.root).resolve()),
            },
        )
        return
    report_stops_once()
    state = pipeline_flow(
        params_path=args.params, root=args.root, until=args.until, return_state=True
    )
    finish("pipeline", state)


if __name__ == "__main__":
    main()
