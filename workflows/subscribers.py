"""The engine's event-bus subscribers: what an emitted event does to runs.

Both are called by :mod:`eventbus.bus` inside the transaction that emits the events
(registered in :meth:`workflows.apps.WorkflowsConfig.ready`), so a run or a resolved
wait exists only if the event does. :func:`start_quietly` is the bus's shortcut for an
event sent alone that needs nothing of either but its runs stored.
"""

from django.db import connection
from django.utils import timezone

from eventbus.models import Event
from workflows import doorbell, gates, lifecycle, registry, runstore_pg, waits
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


def start_quietly(event: Event) -> bool:
    """Store ``event``, sent alone and emitted at once, with the runs it starts, in one
    round trip; whether it did (the event bus's shortcut, :func:`eventbus.bus.set_shortcut`).

    What :func:`start_runs` and :func:`resolve_waits` would do, when that is only
    storing new queued runs: on PostgreSQL, outside a transaction, while the bus has no
    subscriber but the engine's own, for an event whose workflows have no flow control,
    no admission options and no ``cancel_on``. One statement stores the event and the
    runs unless a wait for the event is recorded in its workspace or one of the
    workflows is paused there (:func:`runstore_pg.store_with_runs`); then nothing is
    written and the bus stores and delivers the event the ordinary way, which resolves
    the wait or records the skip. A worker is rung for the runs once they are stored.
    """
    if connection.vendor != "postgresql" or not runstore_pg.on_its_own(connection):
        return False
    if not lifecycle.only_skippable_subscribers():
        return False
    workflows = registry.subscribers(event.name)
    if any(wf.flow or wf.admission or wf.cancel_on for wf in workflows):
        return False
    now = timezone.now()
    runs = [lifecycle.new_run(event, wf, now=now) for wf in workflows]
    key = waits.emitter_lock_key(event.workspace_id, event.name)
    if not runstore_pg.store_with_runs(event, runs, key):
        return False
    doorbell.ring(run.pk for run in runs)
    return True
