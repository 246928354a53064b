"""A stage's flow-run heartbeats: Prefect's `prefect.flow-run.heartbeat` events, which an
automation turns into a Crashed state for a run whose process died (README: "Watching runs").

Prefect sends them itself when PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set, from a thread that
sleeps in whole seconds and that the run waits for at its end: up to a second at the end of
every stage (0.77 s measured for a collect with nothing to fetch). The stages turn that off
(flows/_stage.py) and send the same events from a thread that stops as soon as the run
ends.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
THREAD_NAME = "stage-heartbeats"


def _resources() -> tuple[dict[str, str], list[dict[str, str]]] | None:
    """The event's resource and related resources, as Prefect's own heartbeat has them;
    None outside a flow run."""
    import prefect
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    run = context.flow_run if context else None
    if run is None:
        return None
    resource = {
        "prefect.resource.id": f"prefect.flow-run.{run.id}",
        "prefect.resource.name": run.name or "",
        "prefect.version": prefect.__version__,
    }
    related = [
        {
            "prefect.resource.id": f"prefect.flow.{run.flow_id}",
            "prefect.resource.role": "flow",
            "prefect.resource.name": context.flow.name if context.flow else "",
        }
    ]
    related += [
        {"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"}
        for tag in sorted(run.tags or [])
    ]
    return resource, related


@contextlib.contextmanager
def sending_heartbeats(every_s: int | None) -> Iterator[None]:
    """Inside a flow run: a heartbeat now and every ``every_s`` seconds until the block
    ends; nothing when ``every_s`` is None or outside a flow run."""
    from prefect.events import emit_event

    resources = _resources() if every_s else None
    if resources is None:
        yield
        return
    resource, related = resources
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):  # a missed heartbeat must not stop the run
                emit_event(HEARTBEAT_EVENT, resource=resource, related=related)
            stop.wait(every_s)

    # the caller's context: Prefect's settings (its API URL) live in context variables
    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(beat,), name=THREAD_NAME, daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
