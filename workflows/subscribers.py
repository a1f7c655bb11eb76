"""The engine's event-bus subscribers: what an emitted event does to runs.

Both are called by :mod:`eventbus.bus` inside the transaction that emits the events
(registered in :meth:`workflows.apps.WorkflowsConfig.ready`), so a run or a resolved
wait exists only if the event does.
"""

from django.db import connection
from django.utils import timezone

from eventbus.models import Event
from workflows import gates, lifecycle, registry, runstore_pg, waits
from workflows.models import (
    EventSkip,
    PausedWorkflow,
    SkipReason,
    StepStatus,
    WaitKind,
    WorkflowRun,
)
from workflows.models.pauses import paused_test


def start_runs(events: list[Event]) -> list[WorkflowRun]:
    """Start one run per subscribed workflow per event; return the runs.

    The unique constraint on (event, workflow) makes a repeated or racing delivery
    create nothing new: conflicting rows are skipped, and ringing for a run id that was
    not stored is a no-op. A workflow paused in the event's workspace gets no run; the
    skip is recorded (:class:`~workflows.models.EventSkip`). A workflow with admission
    options (``rate_limit``, ``debounce``, …) goes through :func:`workflows.gates.admit`.
    """
    now = timezone.now()
    pairs = [(event, wf) for event in events for wf in registry.subscribers(event.name)]
    if not pairs:
        return []
    workflow_ids = sorted({wf.id for _, wf in pairs})
    if connection.vendor == "postgresql":  # raw: no ORM query compiled at every send
        paused = paused_test(runstore_pg.pauses_of(workflow_ids))
    else:
        paused = PausedWorkflow.objects.among(workflow_ids)
    if paused:
        held = [paused(wf.id, e.workspace_id) for e, wf in pairs]
        EventSkip.objects.bulk_create(
            EventSkip(event=e, workflow_id=wf.id, reason=SkipReason.PAUSED, created_at=now)
            for (e, wf), skip in zip(pairs, held, strict=True)
            if skip
        )
        pairs = [pair for pair, skip in zip(pairs, held, strict=True) if not skip]
    gated = [(event, wf) for event, wf in pairs if wf.admission]
    plain = [(lifecycle.new_run(event, wf, now=now), wf) for event, wf in pairs if not wf.admission]
    started = lifecycle.start(plain, skip_repeats=True) if plain else []
    return started + gates.admit(gated, now) if gated else started


def resolve_waits(events: list[Event]) -> None:
    """Settle the waits the emitted ``events`` satisfy; ``cancel_on`` waits cancel."""
    for wait, event, data in waits.arrivals(events):
        if wait.kind == WaitKind.CANCEL:
            lifecycle.cancel(wait.run_id, reason=f"cancelled by event {event.name!r} ({event.id})")
        else:
            waits.resolve(wait, StepStatus.COMPLETED, output={"event": data})
