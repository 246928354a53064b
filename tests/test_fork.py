"""flows/_fork.py: processes forked after a flow logged to Prefect (DataLoader workers)
exit cleanly, while the flow's own process still drains its logs at exit."""

from __future__ import annotations

import multiprocessing
import threading

from prefect import flow, get_run_logger

import flows  # noqa: F401  (what every stage's flow module imports first)
from flows._fork import is_service_drain


def service_drains() -> list:
    return [call for call in threading._threading_atexits if is_service_drain(call)]


@flow
def speaks() -> None:
    get_run_logger().info("a line for the API: Prefect starts its log service")


def test_a_child_forked_after_a_flow_logged_exits_cleanly(prefect_harness):
    speaks()
    assert service_drains()  # the state that made children exit 1: drains registered here

    context = multiprocessing.get_context("fork")
    children = [context.Process(target=service_drains) for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0

    assert service_drains()  # this process still sends its last log lines at exit
