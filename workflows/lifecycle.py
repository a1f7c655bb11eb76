"""How a run starts and how it ends, with everything that follows from either.

:func:`start` is the one way a run begins (an event's subscribers, a replay, an invoked
child, a parallel branch, a failure handler): the run is stored, its ``cancel_on`` waits
are recorded, and a worker is rung once the transaction commits.

:func:`finish` and :func:`cancel` end a run; :func:`ended` runs inside the transaction
that moved the run to its terminal status, so a run never ends without its parent
hearing of it, and never emits its system event twice.

System events, emitted in the run's workspace (subscribe workflows to them, or wait for
them with ``step.wait_for_event``):

- ``workflows/run.finished`` when a run ends, whatever its status;
- ``workflows/run.failed`` when it failed for good;
- ``workflows/run.cancelled`` when it was cancelled.

Their ``data``: ``run_id``, ``workflow_id``, ``status``, ``event`` (the trigger: ``id``,
``name``, ``data``, ``ts``), and ``output`` or ``error``. Runs triggered by a
``workflows/run.*`` event (failure handlers among them) do not emit system events, so a
workflow subscribed to them cannot feed itself; branch runs of ``step.parallel`` do not
either.
"""

import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from eventbus import bus, validation
from eventbus.exceptions import EventError
from eventbus.models import Event, EventStatus, build
from workflows import doorbell, flowcontrol, registry, runstore, slots, telemetry, waits
from workflows.exceptions import UnknownWorkflowError
from workflows.models import ACTIVE_STATUSES, RunStatus, StepResult, Wait, WorkflowRun
from workflows.payloads import event_dict

logger = logging.getLogger("workflows.lifecycle")

RUN_FINISHED = "workflows/run.finished"
RUN_FAILED = "workflows/run.failed"
RUN_CANCELLED = "workflows/run.cancelled"
#: The trigger event of a run started by ``step.invoke`` (stored, never broadcast).
INVOKED = "workflows/invoke"
#: Every name under it is the engine's own: reserved on the event bus at start-up.
RESERVED_PREFIX = "workflows/"
_SYSTEM_PREFIX = "workflows/run."


def new_run(
    event: Event,
    wf: registry.Workflow,
    *,
    now: Any = None,
    **fields: Any,
) -> WorkflowRun:
    """An unsaved queued run of ``wf`` for ``event``, with its start timeout, the
    workflow's current version label and its flow-control keys set.

    A branch of ``step.parallel`` (``branch_index`` given) has no timeout of its own:
    its parent's apply. The keys (concurrency groups, throttle key, priority) are
    evaluated here, once: new code never moves an existing run to another group.
    """
    now = now or timezone.now()
    start = wf.timeouts.start
    fields.setdefault("id", uuid.uuid4())
    fields.setdefault("is_replay", fields.get("replay_of") is not None)
    branch = fields.get("branch_index") is not None
    if wf.flow:
        keys = flowcontrol.keys_for(
            wf.flow, wf.id, event_dict(event), event.workspace.slug, run=fields["id"]
        )
        fields.update(
            slot_1=keys.slots[0] if keys.slots else "",
            slot_2=keys.slots[1] if len(keys.slots) > 1 else "",
            throttle_key=keys.throttle or "",
            priority=keys.priority,
            order_at=now - timedelta(seconds=keys.priority),
        )
    else:
        fields.setdefault("order_at", now)
    return build(
        WorkflowRun,
        workspace_id=event.workspace_id,
        workflow_id=wf.id,
        version=wf.version,
        event=event,
        status=RunStatus.QUEUED,
        due_at=runstore.ring_due(now),
        created_at=now,
        timeout_at=now + start if start and not branch else None,
        **fields,
    )


def start(
    runs: Iterable[tuple[WorkflowRun, registry.Workflow]], *, skip_repeats: bool = False
) -> list[WorkflowRun]:
    """Start new runs (from :func:`new_run`), each with its workflow; return the runs.

    In the caller's transaction: the runs are stored, the ``cancel_on`` waits of each
    (branches aside) are recorded, and a worker is rung for them once it commits. With
    ``skip_repeats``, a run its event already started (a repeated or racing delivery)
    is not stored again; ringing for it is then a no-op. A run whose concurrency group
    is full (or has a line) is stored waiting for a slot and not rung.
    """
    pairs = list(runs)
    held = slots.line_up([run for run, _ in pairs], timezone.now())
    runstore.insert([run for run, _ in pairs], skip_repeats=skip_repeats)
    ruled = [(run, wf) for run, wf in pairs if wf.cancel_on and not run.is_branch]
    if ruled and skip_repeats:
        # Only runs really stored (not skipped as repeats) get their cancel_on waits.
        stored = runstore.stored([run.pk for run, _ in ruled])
        ruled = [(run, wf) for run, wf in ruled if run.pk in stored]
    if ruled:
        waits.cancel_waits_for(ruled)
    doorbell.ring_on_commit(run.pk for run, _ in pairs if run.pk not in held)
    return [run for run, _ in pairs]


def ended(run: WorkflowRun) -> None:
    """In the transaction that ended ``run`` (its status, output and error are set)."""
    telemetry.run_ended(run)  # counted and signalled once this commits
    wf = _registered(run.workflow_id)
    if run.status == RunStatus.CANCELLED or wf is None or wf.cancel_on:
        # A run that completed or failed is past its waits, except its cancel_on ones.
        Wait.objects.filter(run=run).delete()
    if run.parent_id is not None:
        waits.child_ended(run)
    if run.status == RunStatus.CANCELLED:
        for child in WorkflowRun.objects.filter(parent=run, status__in=ACTIVE_STATUSES):
            cancel(child.pk, reason=f"its parent run {run.pk} was cancelled")
        # Deferred events its steps sent must not fire after the cancellation.
        Event.objects.filter(source_run_id=run.pk, status=EventStatus.SCHEDULED).update(
            status=EventStatus.CANCELLED
        )
    if run.is_branch or run.event.name.startswith(_SYSTEM_PREFIX):
        return
    _emit_system_events(run, wf)


def _finished_data(run: WorkflowRun) -> dict[str, Any]:
    """The data of the system events of the end of ``run`` (its status and outcome set)."""
    data: dict[str, Any] = {
        "run_id": str(run.pk),
        "workflow_id": run.workflow_id,
        "status": run.status,
        "event": event_dict(run.event),
    }
    if run.status == RunStatus.COMPLETED:
        data["output"] = run.output
    else:
        data["error"] = run.error
    return data


def _emit_system_events(run: WorkflowRun, wf: registry.Workflow | None) -> None:
    data = _finished_data(run)
    names = [RUN_FINISHED]
    if run.status == RunStatus.FAILED:
        names.append(RUN_FAILED)
    elif run.status == RunStatus.CANCELLED:
        names.append(RUN_CANCELLED)
    specs = [_spec(name, data) for name in names]
    ids = bus.store(specs, run.workspace)
    if run.status != RunStatus.FAILED or wf is None or wf.on_failure is None:
        return
    failed_event = Event.objects.get(pk=ids[-1])
    start([(new_run(failed_event, wf.on_failure), wf.on_failure)])


def _registered(workflow_id: str) -> registry.Workflow | None:
    try:
        return registry.get(workflow_id)
    except UnknownWorkflowError:
        return None


def _spec(name: str, data: dict[str, Any]) -> validation.EventSpec:
    try:
        return validation.event(name, data, reserved_ok=True)
    except EventError:
        # Too big with the output (or a huge trigger): keep the facts, drop the bulk.
        slim = {key: value for key, value in data.items() if key not in ("output", "event")}
        slim["event"] = {key: data["event"][key] for key in ("id", "name", "ts")}
        slim["truncated"] = True
        if isinstance(slim.get("error"), dict):
            slim["error"] = {
                key: str(value)[:2000]
                for key, value in slim["error"].items()
                if key != "child_error"
            }
        return validation.event(name, slim, reserved_ok=True)


def cancel(run_id: Any, *, reason: str = "cancelled") -> bool:
    """Cancel an active run, and what hangs on it; ``False`` if it had already ended.

    A step that is executing right now finishes and its result is kept, but the run
    runs no further step. Its waits are dropped, its deferred events that are not yet
    emitted never will be, its active children are cancelled, and a parent waiting for
    it (``step.invoke``) gets a ``StepError``.
    """
    with transaction.atomic():
        if not runstore.cancel(run_id, reason=reason):
            return False
        run = WorkflowRun.objects.select_related("event", "workspace").get(pk=run_id)
        ended(run)
    logger.info("run %s cancelled: %s", run_id, reason, extra=telemetry.log_fields(run))
    return True


def finish(
    run: WorkflowRun, token: str, status: str, *, output: Any = None, error: Any = None
) -> bool:
    """End the run we own as completed or failed, with everything that follows from it."""
    if status == RunStatus.COMPLETED and ends_quietly(run):
        quietly = _finish_quietly(run, token, output)
        if quietly is not None:
            return quietly
    with transaction.atomic():
        if not runstore.finish(run.pk, token, status, output=output, error=error):
            return False
        run.status, run.output, run.error = status, output, error
        ended(run)
    return True


#: The event-bus handlers a quiet end of a run may skip (:func:`skippable_subscriber`).
_skippable: set[Any] = set()


def skippable_subscriber(handler: Any) -> None:
    """Let the end of a run skip the event-bus handler ``handler`` when it stores its
    ``run.finished`` (see :func:`ends_quietly`): the engine's own two (``apps.ready``),
    which have no work for that event when no workflow is triggered by it and no wait
    is recorded for it. Any other handler makes every end deliver it (and every
    ``send`` deliver its event: see :func:`workflows.subscribers.start_quietly`)."""
    _skippable.add(handler)


def ends_quietly(run: WorkflowRun) -> bool:
    """Whether the completion of ``run`` needs nothing but its row and its
    ``run.finished`` event, unless a wait for that event exists (which the one statement
    of :func:`_finish_quietly` finds out): on PostgreSQL, outside a transaction, a run
    of a registered workflow that no ``cancel_on`` watches, with no parent, not a
    branch, not started by a system event, while no workflow is triggered by
    ``run.finished`` and every subscriber of the event bus may be skipped
    (:func:`skippable_subscriber`)."""
    if connection.vendor != "postgresql" or not runstore.on_its_own(connection):
        return False
    if run.is_branch or run.parent_id is not None or run.event.name.startswith(_SYSTEM_PREFIX):
        return False
    wf = _registered(run.workflow_id)
    if wf is None or wf.cancel_on or registry.subscribers(RUN_FINISHED):
        return False
    return only_skippable_subscribers()


def only_skippable_subscribers() -> bool:
    """Whether every handler of the event bus is one of the engine's own that may be
    skipped when nothing waits for an event (:func:`skippable_subscriber`)."""
    return _skippable.issuperset(bus.subscribers())


def finish_with_memo(
    run: WorkflowRun, token: str, output: Any, memo: StepResult, recorded: Callable[[], None]
) -> bool:
    """Complete ``run``, store ``memo`` (its last step's, held back) and its
    ``run.finished`` event in one transaction, if the run ends quietly
    (:func:`ends_quietly`); whether it did. Once committed, ``recorded`` (the step's
    counts and signal) is called before the run's end is counted and signalled.
    ``False``: nothing was written (store the memo, then :func:`finish` the run)."""
    return ends_quietly(run) and _finish_quietly(run, token, output, memo, recorded) is True


def _finish_quietly(
    run: WorkflowRun,
    token: str,
    output: Any,
    memo: StepResult | None = None,
    recorded: Callable[[], None] | None = None,
) -> bool | None:
    """Complete ``run`` and store its ``run.finished`` event (and ``memo``) in one round
    trip (:func:`runstore.finish_with_event`), the concurrency slot it holds handed on
    with them; ``None`` if that cannot be (slots of several lines to hand on, a wait for
    the event) and nothing was written: the caller ends the run the ordinary way."""
    previous = run.status, run.output
    run.status, run.output = RunStatus.COMPLETED, output
    row = bus.immediate_row(_spec(RUN_FINISHED, _finished_data(run)), run.workspace)
    key = waits.emitter_lock_key(row.workspace_id, RUN_FINISHED)
    done = runstore.finish_with_event(run.pk, token, output, row, key, memo)
    if done:
        if recorded is not None:
            recorded()
        telemetry.run_ended(run, committed=True)  # counted and signalled now
    else:
        run.status, run.output = previous
    return done


def expire_timeouts(limit: int) -> int:
    """Cancel up to ``limit`` runs whose start or finish timeout has passed.

    Paused runs are left alone: they wait for someone to resume them.
    """
    now = timezone.now()
    overdue = list(
        WorkflowRun.objects.moving()
        .filter(timeout_at__lte=now)
        .order_by("timeout_at")
        .values_list("pk", "workflow_id", "started_at")[:limit]
    )
    cancelled = 0
    for pk, workflow_id, started_at in overdue:
        cancelled += cancel(pk, reason=timeout_reason(workflow_id, started=started_at is not None))
    return cancelled


def timeout_reason(workflow_id: str, *, started: bool) -> str:
    """Why a run was cancelled by its workflow's ``timeouts``."""
    wf = _registered(workflow_id)
    if wf is None:
        return "timed out"
    limits = wf.timeouts
    if started:
        return f"timed out: did not finish within {limits.finish} of its start"
    return f"timed out: did not start within {limits.start} of its creation"
