"""Run workflows in the current process, for fast tests of workflow code.

``drain()`` executes every runnable run in this process until none is left, with the
broker out of the picture (bells are dropped: the database says what is runnable).
``skip_time=True`` brings every sleep, retry backoff, deferred event and debounce or batch
timer forward to now, so a workflow that sleeps for days finishes in one call (waits for
events and invoked runs are left alone: send the event, or let the child finish). This is
for testing workflow logic; durability is proven by the real-worker tests of this project.
"""

import contextlib
import threading
from collections.abc import Iterator

from django.utils import timezone

from eventbus import bus
from eventbus.models import Event, EventStatus
from workflows import doorbell, engine, gates, lifecycle
from workflows.models import RunStatus, StepResult, StepStatus, WorkflowRun


@contextlib.contextmanager
def no_broker() -> Iterator[list[str]]:
    """Inside the block, bells are collected in the yielded list instead of sent.

    Safe across threads (each thread's bells go to its own innermost block) and however
    blocks of several threads interleave: bells go to the broker again only once every
    block has ended.
    """
    global _active, _saved
    rung: list[str] = []
    stack = _blocks.__dict__.setdefault("stack", [])
    with _lock:
        if _active == 0:
            _saved = doorbell._override
            doorbell._override = _collect
        _active += 1
    stack.append(rung)
    try:
        yield rung
    finally:
        stack.pop()
        with _lock:
            _active -= 1
            if _active == 0:
                doorbell._override = _saved


_lock = threading.Lock()
_blocks = threading.local()
_active = 0
_saved = None


def _collect(ids: list[str], at: object) -> None:
    stack = getattr(_blocks, "stack", None)
    if stack:
        stack[-1].extend(ids)  # a thread without a block of its own: dropped, not sent


def drain(*, skip_time: bool = False, max_executions: int = 10_000) -> int:
    """Execute runnable runs here until none is left; return how many executions ran."""
    executed = 0
    with no_broker():
        while executed < max_executions:
            now = timezone.now()
            if skip_time:
                _bring_forward(now)
            bus.emit_due()
            gates.fire_due(1000)
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
    gates.bring_forward(now)
    WorkflowRun.objects.filter(
        status__in=[RunStatus.QUEUED, RunStatus.SLEEPING], wake_at__gt=now
    ).update(wake_at=now, due_at=now)
    WorkflowRun.objects.filter(throttle_at__gt=now).update(throttle_at=now)  # throttles too
    StepResult.objects.filter(
        status__in=[StepStatus.SLEEPING, StepStatus.RETRYING], wake_at__gt=now
    ).update(wake_at=now)
