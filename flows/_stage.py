"""Running a stage flow from the command line (the cmd of its DVC stage).

Expected errors (a StageError such as a pending review or a bad table, a bad params.yaml,
a failed search) are the user's to act on: their message says what to do, and a traceback
would only bury it. Prefect logs every exception that leaves a task or a flow with its
traceback, so two logging filters handle them:

- on Prefect's run loggers (console and UI alike), an expected error keeps its log line
  but loses the traceback; unexpected errors (bugs) keep theirs;
- on the console of a stage run from the command line, the lines that only repeat an error
  that stops the stage (the task's exception, the "Finished in state Failed(...)" lines)
  are left out, because the runner ends with that message itself: the stage prints it once.
"""

from __future__ import annotations

import argparse
import contextvars
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from prefect import tags
from prefect.context import TagsContext
from prefect.states import Failed, State

from anime_face_id.config import ComputeConfig, ConfigError, Params, load_params
from anime_face_id.errors import EngineRefused, SearchError, StageError
from anime_face_id.interrupt import stop_on_ctrl_c
from anime_face_id.params_fill import dvc_missing_keys, missing_message
from anime_face_id.process_exit import skip_final_collection
from flows.heartbeats import sending_heartbeats
from tasks.reporting import PIPELINE_TAG

# Errors that stop a stage: the runner's last line is their message (a refusing search
# engine's, inside collect's StageError).
STOPPING_ERRORS: tuple[type[Exception], ...] = (StageError, ConfigError, EngineRefused)
# Errors with a message for the user and no traceback: a failed search is one too, but it
# is recorded as a reject and the stage goes on.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (*STOPPING_ERRORS, SearchError)
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")

# Messages of errors that stopped a run in this process, for the console filter.
_stopped_with: set[str] = set()
# Seconds between the running stage's heartbeats (flows.heartbeats); None: it sends none.
_heartbeat_every: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "heartbeat_every", default=None
)


def parse_args(stage: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m flows.{stage}", description=f"Run the {stage} stage."
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: params.yaml)"
    )
    parser.add_argument("--root", default=".", help="project root (default: the current directory)")
    return parser.parse_args()


class _NoTracebackForExpectedErrors(logging.Filter):
    """On a run logger: drop the traceback of an expected error, keep its line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, EXPECTED_ERRORS):
            record.exc_info = None
            record.exc_text = None
            record.expected_error = error  # for the console filter below
            if isinstance(error, STOPPING_ERRORS):
                _stopped_with.add(str(error))
        return True


class _StopReportedOnce(logging.Filter):
    """On the console of a command-line run: leave out Prefect's lines that repeat the
    error that stops the stage; the runner prints it as its last line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(getattr(record, "expected_error", None), STOPPING_ERRORS):
            return False
        if record.name in RUN_LOGGERS and record.getMessage().startswith("Finished in state"):
            text = record.getMessage()
            # The state's message is shown as its repr, inside that of a longer message.
            # A task not retried by its retry condition logs its error nowhere else, so
            # its state is known by the error's kind alone ("...an exception EngineRefused:").
            return not any(repr(stop)[1:-1] in text for stop in _stopped_with) and not any(
                f"exception {kind.__name__}:" in text for kind in STOPPING_ERRORS
            )
        return True


def _has_filter(filterer: logging.Filterer, kind: type) -> bool:
    return any(isinstance(existing, kind) for existing in filterer.filters)


def quiet_expected_errors() -> None:
    """Expected errors log without a traceback in this process (idempotent)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not _has_filter(logger, _NoTracebackForExpectedErrors):
            logger.addFilter(_NoTracebackForExpectedErrors())


class _NoDrainCountdown(logging.Filter):
    """Prefect's log and event senders, still sending as the process exits, warn "Still
    processing items: N items remaining..." when a run ends within a moment of its last
    events, as a brief stage's does. Nothing is wrong and nothing is to be done: they go
    on sending."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Still processing items")


def _quiet_exit_drain() -> None:
    for name in ("EventsWorker", "APILogWorker"):
        logger = logging.getLogger(name)
        if not _has_filter(logger, _NoDrainCountdown):
            logger.addFilter(_NoDrainCountdown())


def report_stops_once() -> None:
    """For command-line runs: the console shows a stopping error once, as the last line,
    and no countdown of what Prefect still sends as the process exits."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    quiet_expected_errors()
    _quiet_exit_drain()
    ensure_logging_setup()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not _has_filter(
            handler, _StopReportedOnce
        ):
            handler.addFilter(_StopReportedOnce())


def fail_on_stage_error(action: Callable[[], object]) -> object:
    """Run ``action``; an expected error that stops the stage (StageError, ConfigError)
    becomes a Failed state with its message, anything else propagates.

    The task runs ``action`` starts carry no tags: the stage's tags name its flow run, and
    Prefect asks the server for a tag concurrency slot before every tagged task run, which
    after a busy task waited ~2 s behind the server's backlog (each stage's first task
    after the crop of a new character, for instance)."""
    quiet_expected_errors()
    try:
        with sending_heartbeats(_heartbeat_every.get()), TagsContext(current_tags=set()):
            return action()
    except STOPPING_ERRORS as error:
        _stopped_with.add(str(error))
        return Failed(message=str(error))


def check_params(path: Path) -> Params:
    """Fail fast on a bad params file, before Prefect starts, with the message only; also
    on a params.yaml that lacks a key dvc.yaml's stages read, which DVC would report only
    when that stage's turn came."""
    try:
        params = load_params(path)
        missing = dvc_missing_keys(path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if missing:
        print(f"error: {missing_message(missing, str(path))}", file=sys.stderr)
        raise SystemExit(2)
    return params


def finish(name: str, state: State) -> None:
    """End a command-line run: nothing more when it completed, else one line saying why
    and exit status 1."""
    if not state.is_completed():
        print(f"\n{name} stopped: {state.message}", file=sys.stderr)
        raise SystemExit(1)


def on_compute(flow, compute: ComputeConfig):
    """The flow with its tasks run where ``compute`` says: its own runner for ``local``,
    a Dask cluster (an existing scheduler, or a local one started for the run) for
    ``dask``."""
    if compute.runner == "local":
        return flow
    from prefect_dask import DaskTaskRunner

    if compute.dask_address:
        return flow.with_options(task_runner=DaskTaskRunner(address=compute.dask_address))
    return flow.with_options(task_runner=DaskTaskRunner(cluster_kwargs=compute.local_cluster))


def run_stage(stage: str, flow, distributes: bool = False, brief: bool = False) -> None:
    """The stage's command line; ``distributes``: the flow's tasks may run on the runner
    that params.compute names; ``brief``: the stage takes about a second, so its flow run
    sends no heartbeats (they tell a crashed long run from a live one)."""
    args = parse_args(stage)
    params = check_params(Path(args.root) / args.params)
    if distributes:
        flow = on_compute(flow, params.compute)
    state = run_from_command_line(
        stage,
        lambda: _reported(
            stage,
            Path(args.root),
            lambda: flow(params_path=args.params, root=args.root, return_state=True),
            heartbeats=not brief,
        ),
        after_ctrl_c="the next run goes on from here",
    )
    skip_final_collection()
    finish(stage, state)


def run_from_command_line(name: str, run: Callable[[], State], after_ctrl_c: str) -> State:
    """``run()``'s final state, its console showing a stopping error once; Ctrl-C ends the
    process with status 130 and one line: ``<name>: stopped by Ctrl-C; <after_ctrl_c>``."""
    report_stops_once()
    stop_on_ctrl_c()
    try:
        return run()
    except KeyboardInterrupt:
        print(f"{name}: stopped by Ctrl-C; {after_ctrl_c}", file=sys.stderr)
        raise SystemExit(130) from None


def _reported(stage: str, root: Path, run, heartbeats: bool = True):
    """``run()`` reporting to the project's running Prefect server when no other is
    configured (else Prefect starts a temporary one for this process alone), its flow run
    tagged ``stage:<stage>``, and with the pipeline's tag when flows.pipeline started it.
    ``heartbeats``: at Prefect's heartbeat frequency, sent by flows.heartbeats (Prefect's
    own, which cost up to a second at the end of a run, are off)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    from flows.server import configured_api_url, running_project_server

    url = None if configured_api_url() else running_project_server(root)
    pipeline = os.environ.get(PIPELINE_TAG)  # set by tasks.dvc for flows.pipeline
    every = get_current_settings().flows.heartbeat_frequency if heartbeats else None
    updates: dict = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    if url is not None:
        updates[PREFECT_API_URL] = url
    token = _heartbeat_every.set(every)
    try:
        with (
            temporary_settings(updates=updates),
            tags(f"stage:{stage}", *([pipeline] if pipeline else [])),
        ):
            return run()
    finally:
        _heartbeat_every.reset(token)


def load(root: str, params_path: str) -> tuple[Path, Params]:
    quiet_expected_errors()
    root_path = Path(root).resolve()
    return root_path, load_params(root_path / params_path)
