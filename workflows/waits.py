"""Runs waiting for events and for other runs: recording waits and resolving them.

A run that waits (``step.wait_for_event``, ``step.invoke``, ``step.parallel``) records a
:class:`~workflows.models.Wait` and suspends in the same transaction. The wait is
resolved by whatever it waits for, in that thing's own transaction: an emitted event
(:func:`candidates` finds the waits it may satisfy; the event-bus subscriber in
:mod:`workflows.subscribers` settles them) or a child run that ended
(:func:`child_ended`). Resolving deletes the wait row with a conditional delete, so an
event, a timeout and a cancellation racing for the same wait have exactly one winner;
the winner stores the step's outcome and puts the run back in the queue.

No event is lost between "the wait is recorded" and "the event is emitted": on
PostgreSQL, both sides take a transaction-level advisory lock on (workspace, event
name), shared for emitters and exclusive for the waiter, and the waiter also looks back
for matching events emitted since the step began. Whichever commits first, the other
sees it. SQLite runs one writing transaction at a time, which gives the same order.
"""

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from django.db import connection
from django.utils import timezone

from eventbus.models import Event, EventStatus
from workflows import doorbell, matching, runstore, runstore_pg
from workflows.exceptions import error_record
from workflows.models import (
    RunStatus,
    StepResult,
    StepStatus,
    Wait,
    WaitKind,
    WaitPath,
    WorkflowRun,
)
from workflows.payloads import event_dict

logger = logging.getLogger("workflows.waits")


def _lock_key(*parts: Any) -> int:
    text = "\x00".join(str(part) for part in ("workflows-wait", *parts))
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big", signed=True)


def emitter_lock_key(workspace_id: Any, name: str) -> int:
    """The advisory lock key that orders emitters of ``name`` in a workspace (shared)
    and the recording of waits for it (exclusive)."""
    return _lock_key(workspace_id, name)


def _lock(*parts: Any) -> None:
    """The exclusive lock of ``parts`` (the shared one is taken by :func:`_waited_for`)."""
    if connection.vendor != "postgresql":
        return  # SQLite: one writing transaction at a time already orders them
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_key(*parts)])


def _waited_for(workspace_id: Any, name: str) -> bool:
    """As an emitter of ``name``: take the emitters' shared lock, then say whether any
    wait for ``name`` exists (one round trip on PostgreSQL)."""
    if connection.vendor != "postgresql":
        return Wait.objects.filter(workspace_id=workspace_id, event_name=name).exists()
    return runstore_pg.waited_for(_lock_key(workspace_id, name), workspace_id, name)


def lock_for_wait(workspace_id: Any, name: str) -> None:
    """Before recording a wait for ``name``: order us after emitters of that name."""
    _lock(workspace_id, name)


# --- conditions -----------------------------------------------------------------------
def index_of(
    match: str | None, expression: str | None, trigger: dict[str, Any], where: str
) -> tuple[str, str]:
    """The (path, hash) a wait is found by, or ("", "") when it must be checked one by one.

    ``ValueError`` if ``match`` names a field the trigger event does not have.
    """
    if match:
        found, value = matching.lookup(trigger, match)
        if not found:
            raise ValueError(
                f"{where}: match={match!r} but the run's trigger event has no {match}; "
                "the field must exist in the trigger to compare with the incoming event"
            )
        return match, matching.value_hash(match, value)
    if expression:
        term = matching.index_term(expression)
        if term is not None:
            if term.trigger_path is None:
                return term.path, matching.value_hash(term.path, term.literal)
            found, value = matching.lookup(trigger, term.trigger_path)
            if found:
                return term.path, matching.value_hash(term.path, value)
    return "", ""


def matches(wait: Wait, trigger: dict[str, Any], incoming: dict[str, Any]) -> bool:
    """Whether ``incoming`` satisfies ``wait`` (its match field and its expression)."""
    if wait.match:
        found_mine, mine = matching.lookup(trigger, wait.match)
        found_theirs, theirs = matching.lookup(incoming, wait.match)
        if not (found_mine and found_theirs):
            return False
        if matching.value_hash(wait.match, mine) != matching.value_hash(wait.match, theirs):
            return False
    if wait.expression:
        return matching.evaluate(wait.expression, trigger, incoming)
    return True


# --- recording ------------------------------------------------------------------------
def record_event_wait(
    run: WorkflowRun,
    step: StepResult,
    *,
    name: str,
    match: str | None,
    expression: str | None,
    expires_at: datetime,
    began: datetime,
    where: str,
) -> dict[str, Any] | None:
    """Inside the step's transaction: store the wait, or return an event that already came.

    Call after :func:`lock_for_wait` and after the step's memo is saved. Returns the
    matching event (as a dict) if one was emitted since ``began``; the caller then
    completes the step instead of waiting.
    """
    trigger = event_dict(run.event)
    path, hashed = index_of(match, expression, trigger, where)
    wait = Wait(
        run=run,
        step=step,
        kind=WaitKind.EVENT,
        workspace_id=run.workspace_id,
        event_name=name,
        match_path=path,
        match_hash=hashed,
        match=match or "",
        expression=expression or "",
        expires_at=expires_at,
        created_at=began,
    )
    recent = Event.objects.filter(
        workspace_id=run.workspace_id,
        name=name,
        status=EventStatus.EMITTED,
        emitted_at__gte=began,
    ).order_by("emitted_at", "created_at")
    for event in recent:
        incoming = event_dict(event)
        if matches(wait, trigger, incoming):
            return incoming
    wait.save(force_insert=True)
    if path:
        WaitPath.objects.bulk_create(
            [WaitPath(workspace_id=run.workspace_id, event_name=name, match_path=path)],
            ignore_conflicts=True,
        )
    return None


def cancel_waits_for(runs: Iterable[tuple[WorkflowRun, Any]]) -> None:
    """Store the ``cancel_on`` waits of newly created runs: (run, workflow) pairs."""
    rows: list[Wait] = []
    paths: set[tuple[Any, str, str]] = set()
    now = timezone.now()
    for run, wf in runs:
        trigger = event_dict(run.event)
        for rule in wf.cancel_on:
            try:
                path, hashed = index_of(rule.match, rule.expression, trigger, "")
            except ValueError:
                logger.warning(
                    "run %s: cancel_on %r ignored: the trigger event has no %s",
                    run.pk,
                    rule.event,
                    rule.match,
                )
                continue
            rows.append(
                Wait(
                    run=run,
                    kind=WaitKind.CANCEL,
                    workspace_id=run.workspace_id,
                    event_name=rule.event,
                    match_path=path,
                    match_hash=hashed,
                    match=rule.match or "",
                    expression=rule.expression or "",
                    expires_at=now + rule.timeout if rule.timeout else None,
                    created_at=now,
                )
            )
            if path:
                paths.add((run.workspace_id, rule.event, path))
    if rows:
        Wait.objects.bulk_create(rows, batch_size=1000)
    if paths:
        WaitPath.objects.bulk_create(
            [WaitPath(workspace_id=w, event_name=n, match_path=p) for w, n, p in sorted(paths)],
            ignore_conflicts=True,
        )


# --- resolving ------------------------------------------------------------------------
def arrivals(events: list[Event]) -> Iterator[tuple[Wait, Event, dict[str, Any]]]:
    """The (wait, event, event as a dict) pairs that emitted ``events`` satisfy.

    Call in the emitting transaction. Each wait is yielded once, with the first event
    that satisfies it, in the order the waits were recorded. A ``cancel`` wait is not
    satisfied by the run's own events.
    """
    groups: dict[tuple[Any, str], list[Event]] = defaultdict(list)
    for event in events:
        groups[(event.workspace_id, event.name)].append(event)
    for workspace_id, name in sorted(groups, key=lambda key: (str(key[0]), key[1])):
        if not _waited_for(workspace_id, name):
            continue
        waiting = Wait.objects.filter(workspace_id=workspace_id, event_name=name)
        batch = groups[(workspace_id, name)]
        paths = list(
            WaitPath.objects.filter(workspace_id=workspace_id, event_name=name).values_list(
                "match_path", flat=True
            )
        )
        incoming = [(event, event_dict(event)) for event in batch]
        hashes = {""}
        for _, data in incoming:
            for path in paths:
                found, value = matching.lookup(data, path)
                if found:
                    hashes.add(matching.value_hash(path, value))
        candidates = waiting.filter(match_hash__in=sorted(hashes)).select_related("run__event")
        if connection.features.has_select_for_update_skip_locked:
            # A wait locked by another emitter or by its timeout is theirs to resolve.
            candidates = candidates.select_for_update(skip_locked=True, of=("self",))
        now = timezone.now()
        for wait in candidates.order_by("created_at", "pk"):
            if wait.expires_at is not None and wait.expires_at <= now:
                continue
            trigger = event_dict(wait.run.event)
            for event, data in incoming:
                if wait.run_id == event.source_run_id and wait.kind == WaitKind.CANCEL:
                    continue  # a run is not cancelled by its own events
                if matches(wait, trigger, data):
                    yield wait, event, data
                    break


def resolve(
    wait: Wait,
    status: str,
    *,
    output: Any = None,
    error: Any = None,
) -> bool:
    """Settle ``wait`` with an outcome for its step; ``False`` if someone settled it first.

    For a parallel branch the step is settled later by the run itself, from its branch
    runs; the run is queued again once its last wait is gone.
    """
    if wait.kind == WaitKind.PARALLEL:
        # Branches ending at once would each see the other's wait still there (neither
        # has committed) and neither would wake the run: take turns per run.
        _lock("run", wait.run_id)
    if not Wait.objects.filter(pk=wait.pk).delete()[0]:
        return False
    now = timezone.now()
    if wait.kind != WaitKind.PARALLEL and wait.step_id is not None:
        StepResult.objects.filter(pk=wait.step_id, status=StepStatus.WAITING).update(
            status=status, output=output, error=error, wake_at=None, finished_at=now
        )
    if not _waits_remain(wait.run_id):
        wake(wait.run_id)
    return True


def _waits_remain(run_id: Any) -> bool:
    return Wait.objects.filter(run_id=run_id, step__isnull=False).exists()


def wake(run_id: Any) -> None:
    """Put a waiting run back in the queue and ring for it once this transaction commits."""
    doorbell.ring_on_commit(runstore.wake([run_id]))


def child_ended(child: WorkflowRun) -> None:
    """In the transaction that ended ``child``: tell the parent step waiting for it."""
    for wait in Wait.objects.filter(child_run=child).select_related("step"):
        if child.status == RunStatus.COMPLETED:
            resolve(
                wait, StepStatus.COMPLETED, output={"run_id": str(child.pk), "output": child.output}
            )
        else:
            detail = child.error or {}
            failed = child.status == RunStatus.FAILED
            verb = "failed" if failed else "was cancelled"
            error = error_record(
                "ChildRunFailed" if failed else "ChildRunCancelled",
                f"run {child.pk} of workflow {child.workflow_id!r} {verb}: "
                f"{detail.get('message', '')}".rstrip(": "),
                detail.get("traceback", ""),
                child_run_id=str(child.pk),
                child_error=child.error,
            )
            resolve(wait, StepStatus.FAILED, error=error)
