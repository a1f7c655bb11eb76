"""From events to runs: one run per subscribed workflow per emitted event."""

from django.utils import timezone

from eventbus.models import Event
from workflows import doorbell, lifecycle, registry, waits
from workflows.models import WorkflowRun


def on_events(events: list[Event]) -> list[WorkflowRun]:
    """Create the runs ``events`` trigger, in the emitting transaction, and ring for them.

    The unique constraint on (event, workflow) makes a repeated or racing delivery
    create nothing new: conflicting rows are skipped, and ringing for a run id that was
    not stored is a no-op.
    """
    now = timezone.now()
    pairs = [
        (lifecycle.new_run(event, wf, now=now), wf)
        for event in events
        for wf in registry.subscribers(event.name)
    ]
    runs = [run for run, _ in pairs]
    if runs:
        WorkflowRun.objects.bulk_create(runs, ignore_conflicts=True, batch_size=1000)
        with_rules = [(run, wf) for run, wf in pairs if wf.cancel_on]
        if with_rules:
            # Only runs really stored (not skipped as repeats) get their cancel_on waits.
            stored = set(
                WorkflowRun.objects.filter(pk__in=[run.pk for run, _ in with_rules]).values_list(
                    "pk", flat=True
                )
            )
            waits.cancel_waits_for((run, wf) for run, wf in with_rules if run.pk in stored)
        doorbell.ring_on_commit(run.id for run in runs)
    return runs
