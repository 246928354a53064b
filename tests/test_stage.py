"""The stage runner's handling of errors: expected ones end a stage with their message once
and no traceback; unexpected ones (bugs) keep their traceback."""

from __future__ import annotations

import logging
import sys
import threading
import time

import pytest

from anime_face_id.config import ConfigError
from anime_face_id.errors import BadTable, StageError
from anime_face_id.sources import SearchError
from flows import _stage
from flows.heartbeats import HEARTBEAT_EVENT, THREAD_NAME, sending_heartbeats


def record_with(error: BaseException, logger: str = "prefect.task_runs", message: str = "x"):
    try:
        raise error
    except BaseException:
        exc_info = sys.exc_info()
    return logging.LogRecord(logger, logging.ERROR, __file__, 1, message, None, exc_info)


@pytest.fixture
def seen_by_run_logger():
    """Records as Prefect's task run logger passes them on to its handlers."""
    _stage.quiet_expected_errors()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("prefect.task_runs")
    handler = Keep()
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        _stage._stopped_with.clear()


@pytest.mark.parametrize(
    "error",
    [StageError("stop"), BadTable("bad header"), ConfigError("bad key"), SearchError("no dir")],
)
def test_expected_errors_are_logged_without_traceback(seen_by_run_logger, error):
    logger = logging.getLogger("prefect.task_runs")
    try:
        raise error
    except Exception:
        logger.error("Task run failed with exception: %r", error, exc_info=True)
    (record,) = seen_by_run_logger
    assert record.exc_info is None and record.exc_text is None
    assert record.getMessage() == f"Task run failed with exception: {error!r}"
    assert logging.Formatter().format(record).count("\n") == 0


def test_unexpected_errors_keep_their_traceback(seen_by_run_logger):
    logger = logging.getLogger("prefect.task_runs")
    try:
        raise KeyError("a bug")
    except KeyError:
        logger.error("Task run failed with exception", exc_info=True)
    (record,) = seen_by_run_logger
    assert record.exc_info is not None
    assert "Traceback (most recent call last)" in logging.Formatter().format(record)


def test_the_console_leaves_out_lines_that_repeat_a_stopping_error(seen_by_run_logger):
    stop = StageError("data/review/decisions.csv: the header lacks column(s) time, 'box'")
    logger = logging.getLogger("prefect.task_runs")
    try:
        raise stop
    except StageError:
        logger.error("Task run failed with exception: %r", stop, exc_info=True)
    console = _stage._StopReportedOnce()
    (failed,) = seen_by_run_logger
    assert not console.filter(failed)

    def line(logger: str, message: str) -> logging.LogRecord:
        return logging.LogRecord(logger, logging.ERROR, __file__, 1, message, None, None)

    finished = f"Finished in state Failed({f'Task run encountered an exception {stop}'!r})"
    assert not console.filter(line("prefect.task_runs", finished))
    assert not console.filter(line("prefect.flow_runs", f"Finished in state Failed({str(stop)!r})"))
    # Everything else stays: other failures, and lines that are not Prefect's state reports.
    assert console.filter(line("prefect.flow_runs", "Finished in state Failed('other')"))
    assert console.filter(line("prefect.flow_runs", "Beginning flow run"))
    assert console.filter(record_with(KeyError("a bug")))
    search_failed = record_with(SearchError("no dir"))
    assert _stage._NoTracebackForExpectedErrors().filter(search_failed)
    assert console.filter(search_failed)  # a failed search does not stop the stage
    # A task its retry condition did not retry logs no error line, only its state: known
    # by the kind of its error, which stops the stage.
    refused = "Task run encountered an exception EngineRefused: google search for 'x' refused"
    assert not console.filter(line("prefect.task_runs", f"Finished in state Failed({refused!r})"))
    failed = "Task run encountered an exception SearchError: no dir"
    assert console.filter(line("prefect.task_runs", f"Finished in state Failed({failed!r})"))


def test_fail_on_stage_error_turns_stopping_errors_into_a_failed_state():
    def stop(error: Exception):
        raise error

    for error in (StageError("pending review"), ConfigError("bad params"), BadTable("bad")):
        state = _stage.fail_on_stage_error(lambda error=error: stop(error))
        assert state.is_failed() and state.message == str(error)
    with pytest.raises(KeyError):
        _stage.fail_on_stage_error(lambda: stop(KeyError("a bug")))
    assert _stage.fail_on_stage_error(lambda: 42) == 42
    _stage._stopped_with.clear()


def test_finish_prints_one_line_and_exits_1_when_the_run_failed(capsys):
    from prefect.states import Completed, Failed

    _stage.finish("review", Completed())
    with pytest.raises(SystemExit) as caught:
        _stage.finish("review", Failed(message="Review incomplete: 3 of 3"))
    assert caught.value.code == 1
    assert capsys.readouterr().err == "\nreview stopped: Review incomplete: 3 of 3\n"


def test_stage_tags_name_the_flow_run_and_its_task_runs_carry_none(prefect_harness, tmp_path):
    """Every tagged task run asks the server for a tag concurrency slot first (seconds
    behind a busy server), so the stage's tags stay on its flow run. A long stage's run sends
    heartbeats from flows.heartbeats, whose thread is gone when the run ends, and Prefect's
    own (which make the run wait for a sleeping thread) are off; a brief stage sends none."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.context import get_run_context
    from prefect.settings import get_current_settings

    @task
    def step() -> str:
        return str(get_run_context().task_run.id)

    @flow
    def stage_flow(params_path: str = "", root: str = "") -> dict:
        prefects_own = get_current_settings().flows.heartbeat_frequency
        return {"task": _stage.fail_on_stage_error(step), "prefects_own": prefects_own}

    runs = {}
    for brief in (True, False):
        state = _stage._reported(
            "split", tmp_path, lambda: stage_flow(return_state=True), heartbeats=not brief
        )
        answer = state.result()
        assert THREAD_NAME not in [thread.name for thread in threading.enumerate()]
        with get_client(sync_client=True) as client:
            runs[brief] = client.read_flow_run(state.state_details.flow_run_id)
        task_run = stored_task_run(answer["task"])
        assert "stage:split" in runs[brief].tags
        assert task_run.tags == []
        assert answer["prefects_own"] is None
    # one heartbeat as the long stage's run began (the next would be minutes later) ...
    (beat,) = heartbeat_events(runs[False].id, wait_s=30)
    assert beat.resource.get("prefect.resource.name") == runs[False].name
    assert "prefect.tag.stage:split" in [related.id for related in beat.related]
    # ... and none from the brief one, sent before it
    assert heartbeat_events(runs[True].id, wait_s=0) == []


def test_heartbeats_come_at_their_interval_and_stop_with_the_block(prefect_harness):
    """Inside a real flow run: a beat at once and one per interval after; at the end the
    thread is gone even when the next beat is an hour away (a thread that slept out its
    interval would outlive the block's 10 s wait for it)."""
    from prefect import flow
    from prefect.context import get_run_context
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    @flow
    def beating() -> str:
        with sending_heartbeats(1):
            time.sleep(2.5)
        with sending_heartbeats(3600):
            pass
        assert THREAD_NAME not in [thread.name for thread in threading.enumerate()]
        return str(get_run_context().flow_run.id)

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        flow_run_id = beating()  # with only these heartbeats, not Prefect's own too
    beats = heartbeat_events(flow_run_id, wait_s=30, at_least=3)
    # at 0, 1 and (unless the machine lags) 2 s, then the hour-long block's first
    assert 3 <= len(beats) <= 4, beats


def stored_task_run(task_run_id: str, wait_s: float = 30):
    """The task run as the server has it, once stored (it stores them from events, in
    batches)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + wait_s
    while True:
        try:
            with get_client(sync_client=True) as client:
                return client.read_task_run(task_run_id)
        except ObjectNotFound:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.2)


def heartbeat_events(flow_run_id, wait_s: float, at_least: int = 1) -> list:
    """The heartbeat events the server holds for the flow run, waiting up to ``wait_s`` for
    ``at_least`` of them (the server stores events in batches)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    wanted = EventFilter(
        event=EventNameFilter(name=[HEARTBEAT_EVENT]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    deadline = time.monotonic() + wait_s
    while True:
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=wanted, limit=50).events  # the server's most
        if len(events) >= at_least or time.monotonic() >= deadline:
            return events
        time.sleep(0.5)


def test_prefects_exit_countdown_is_not_shown(caplog):
    _stage.report_stops_once()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("EventsWorker").warning("Still processing items: 4 items remaining...")
        logging.getLogger("EventsWorker").warning("a real problem")
    assert [r.getMessage() for r in caplog.records] == ["a real problem"]
