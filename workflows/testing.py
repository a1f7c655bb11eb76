"""Run workflows in the current process, for fast tests of workflow code.

``drain()`` executes every runnable run in this process until none is left, with the
broker out of the picture (bells are dropped: the database says what is runnable).
``skip_time=True`` brings every sleep, retry backoff and deferred event forward to now,
so a workflow that sleeps for days finishes in one call (waits for events and invoked
runs are left alone: send the event, or let the child finish). This is for testing workflow
logic; durability is proven by the real-worker tests of this project.
"""

import contextlib
from collections.abc import Iterator

from django.utils import timezone

from eventbus import bus
from eventbus.models import Event, EventStatus
from workflows import doorbell, engine, lifecycle
from workflows.models import RunStatus, StepResult, StepStatus, WorkflowRun


@contextlib.contextmanager
def no_broker() -> Iterator[list[str]]:
    """Inside the block, bells are collected in the yielded list instead of sent."""
    rung: list[str] = []
    previous = doorbell._override
    doorbell._override = lambda ids, at: rung.extend(ids)
    try:
        yield rung
    finally:
        doorbell._override = previous


def drain(*, skip_time: bool = False, max_executions: int = 10_000) -> int:
    """Execute runnable runs here until none is left; return how many executions ran."""
    executed = 0
    with no_broker():
        while executed < max_executions:
            now = timezone.now()
            if skip_time:
                _bring_forward(now)
            bus.emit_due()
            lifecycle.expire_timeouts(1000)
            runnable = WorkflowRun.objects.runnable(now).order_by("created_at")
            ids = list(runnable.values_list("pk", flat=True)[:100])
            if not ids:
                break
            for run_id in ids:
                engine.execute(run_id)
                executed += 1
    return executed


def _bring_forward(now) -> None:
    now_ms = bus.now_ms()
    Event.objects.filter(status=EventStatus.SCHEDULED, ts__gt=now_ms).update(ts=now_ms)
    WorkflowRun.objects.filter(
        status__in=[RunStatus.QUEUED, RunStatus.SLEEPING], wake_at__gt=now
    ).update(wake_at=now, due_at=now)
    StepResult.objects.filter(
        status__in=[StepStatus.SLEEPING, StepStatus.RETRYING], wake_at__gt=now
    ).update(wake_at=now)
