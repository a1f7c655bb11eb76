"""From events to runs: one run per subscribed workflow per emitted event."""

import uuid
from datetime import timedelta

from django.utils import timezone

from eventbus.models import Event
from workflows import conf, doorbell, registry
from workflows.models import RunStatus, WorkflowRun


def on_events(events: list[Event]) -> list[WorkflowRun]:
    """Create the runs ``events`` trigger, in the emitting transaction, and ring for them.

    The unique constraint on (event, workflow) makes a repeated or racing delivery
    create nothing new: conflicting rows are skipped, and ringing for a run id that was
    not stored is a no-op.
    """
    now = timezone.now()
    due = now + timedelta(seconds=conf.get().RING_TIMEOUT_SECONDS)
    runs = [
        WorkflowRun(
            id=uuid.uuid4(),
            workspace_id=event.workspace_id,
            workflow_id=wf.id,
            event=event,
            status=RunStatus.QUEUED,
            due_at=due,
            created_at=now,
        )
        for event in events
        for wf in registry.subscribers(event.name)
    ]
    if runs:
        WorkflowRun.objects.bulk_create(runs, ignore_conflicts=True, batch_size=1000)
        doorbell.ring_on_commit(run.id for run in runs)
    return runs
