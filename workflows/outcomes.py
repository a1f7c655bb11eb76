"""What an event did: for each workflow subscribed to it, its runs, or why it started none.

Read by the event's admin page and by ``show_event``. The reasons come from what
admission stored when it decided (:mod:`workflows.gates`): the
:class:`~workflows.models.EventSkip` rows (paused, rate-limited, debounced, skipped by a
singleton, idempotent), the batch memberships, and the debounces still collecting.
"""

from dataclasses import dataclass
from typing import Any

from django.db.models import Count

from eventbus.models import Event, EventStatus
from workflows import registry
from workflows.models import (
    BatchEvent,
    EventSkip,
    GateKind,
    GateState,
    SkipReason,
    WorkflowRun,
)


@dataclass(frozen=True)
class Outcome:
    """One line about one workflow: a run the event started (``run``), or why none."""

    workflow_id: str
    text: str
    run: WorkflowRun | None = None
    reason: str = ""


def of_event(event: Event) -> list[Outcome]:
    """What ``event`` did to each workflow subscribed to it (or that recorded something)."""
    lines: list[Outcome] = []
    for run in WorkflowRun.objects.filter(event=event, parent__isnull=True).order_by("created_at"):
        replay = " (replay)" if run.is_replay else ""
        lines.append(Outcome(run.workflow_id, f"run {run.pk} ({run.status}){replay}", run=run))
    lines += _batches(event)
    for skip in EventSkip.objects.filter(event=event).order_by("created_at"):
        detail = f" ({_gave_way_to(skip)})" if skip.detail else ""
        lines.append(
            Outcome(
                skip.workflow_id,
                f"no run: {skip.get_reason_display()}{detail}",
                reason=skip.reason,
            )
        )
    for state in GateState.objects.filter(kind=GateKind.DEBOUNCE, event=event):
        lines.append(
            Outcome(
                state.workflow_id,
                f"no run yet: debounce pending, its run starts at {state.due_at.isoformat()} "
                "unless a later event takes its place",
                reason=SkipReason.DEBOUNCED,
            )
        )
    told = {line.workflow_id for line in lines}
    for wf in registry.subscribers(event.name):
        if wf.id in told:
            continue
        if event.status == EventStatus.SCHEDULED:
            text = f"no run yet: the event is scheduled for ts {event.ts}"
        elif event.status == EventStatus.CANCELLED:
            text = "no run: the event was cancelled before it was emitted"
        else:
            text = "no run and no reason recorded (subscribed after the event was emitted?)"
        lines.append(Outcome(wf.id, text))
    return lines


def _gave_way_to(skip: EventSkip) -> str:
    if skip.reason == SkipReason.DEBOUNCED:
        return f"superseded by {skip.detail}"
    if skip.reason == SkipReason.SINGLETON:
        return f"active: {skip.detail}"
    if skip.reason == SkipReason.IDEMPOTENT:
        return f"first started by {skip.detail}"
    return skip.detail


def _batches(event: Event) -> list[Outcome]:
    lines = []
    for member in BatchEvent.objects.filter(event=event):
        batch = BatchEvent.objects.filter(batch_id=member.batch_id)
        size = batch.aggregate(n=Count("pk"))["n"]
        first = batch.filter(position=0).values_list("event_id", flat=True).first()
        where = f"event {member.position + 1} of batch {member.batch_id}"
        run = WorkflowRun.objects.filter(
            event_id=first, workflow_id=member.workflow_id, parent__isnull=True
        ).first()
        text: str
        reason: Any = SkipReason.BATCHED
        if run is not None:
            if first == event.pk:
                continue  # the batch run's own trigger: listed with the runs
            text = f"batched: {where} ({size} events), run {run.pk} ({run.status})"
        elif GateState.objects.filter(batch_id=member.batch_id).exists():
            text = f"no run yet: batched, {where}, still collecting ({size} so far)"
        else:
            refused = EventSkip.objects.filter(event_id=first, workflow_id=member.workflow_id)
            why = ", ".join(skip.get_reason_display() for skip in refused) or "unknown"
            text = f"no run: batched, {where} ({size} events), which started no run: {why}"
        lines.append(Outcome(member.workflow_id, text, run=run, reason=reason))
    return lines
