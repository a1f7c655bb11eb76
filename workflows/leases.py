"""Named, guarded transitions of a run, and the fenced writes of its steps.

Every transition is a conditional ``UPDATE … WHERE status IN (allowed)`` whose row count
is checked, so a duplicate message, a late worker or a second dispatcher can never move
a run backwards. A worker owns a run through a lease (``lease_owner`` is a token unique
to one execution); every write it makes is fenced by that token.
"""

from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from workflows import conf
from workflows.models import (
    ACTIVE_STATUSES,
    RunStatus,
    StepResult,
    StepStatus,
    WorkflowRun,
)


class LeaseLost(BaseException):
    """This worker no longer owns the run (its lease expired and another took over).

    A ``BaseException`` so that no ``except Exception`` in user code can swallow it.
    """


class RunCancelled(BaseException):
    """The run was cancelled while this worker executed it."""


def _lease_until(now: datetime) -> datetime:
    return now + timedelta(seconds=conf.get().LEASE_SECONDS)


def claim(run_id: Any, token: str) -> WorkflowRun | None:
    """Take the run if it may run now; return it, or ``None`` if it is not ours to run."""
    now = timezone.now()
    lease = _lease_until(now)
    runnable = (
        Q(status=RunStatus.QUEUED) & (Q(wake_at__isnull=True) | Q(wake_at__lte=now))
        | Q(status=RunStatus.SLEEPING, wake_at__lte=now)
        | Q(status=RunStatus.WAITING, wake_at__lte=now)  # a wait or invoke timed out
        | Q(status=RunStatus.RUNNING, lease_expires_at__lt=now)
    )
    with transaction.atomic():
        claimed = WorkflowRun.objects.filter(Q(pk=run_id) & runnable).update(
            status=RunStatus.RUNNING,
            lease_owner=token,
            lease_expires_at=lease,
            due_at=lease,
            wake_at=None,
            started_at=Coalesce("started_at", now),
        )
        if not claimed:
            return None
        # Sleeps that have ended are done: mark them so the timeline shows it.
        StepResult.objects.filter(
            run_id=run_id, status=StepStatus.SLEEPING, wake_at__lte=now
        ).update(status=StepStatus.COMPLETED, finished_at=now)
    return WorkflowRun.objects.select_related("event", "workspace").get(pk=run_id)


def renew(run_id: Any, token: str) -> bool:
    """Extend the lease; ``False`` if the run is no longer ours or no longer running."""
    lease = _lease_until(timezone.now())
    return bool(
        WorkflowRun.objects.filter(pk=run_id, lease_owner=token, status=RunStatus.RUNNING).update(
            lease_expires_at=lease, due_at=lease
        )
    )


def _fence(run_id: Any, token: str) -> None:
    """Inside a transaction: check we still own the running run, and renew the lease."""
    if renew(run_id, token):
        return
    state = WorkflowRun.objects.filter(pk=run_id).values_list("status", "lease_owner").first()
    if state == (RunStatus.CANCELLED, token):
        raise RunCancelled()
    raise LeaseLost()


def save_step(
    run_id: Any,
    token: str,
    memo: StepResult,
    *,
    then: Any = None,
    suspend: tuple[str, datetime | None, datetime | None] | None = None,
    keep_if_cancelled: bool = False,
) -> None:
    """Store a step's memo in one transaction, fenced by the lease.

    ``then`` is called inside the same transaction after the memo is saved (used by
    ``send_event`` to store its events). ``suspend`` = (status, wake_at, due_at) also
    releases the run in that transaction. When the run was cancelled meanwhile, the memo
    of a step body that already ran is kept (``keep_if_cancelled``); nothing else is
    written, and :class:`RunCancelled` stops the execution.
    """
    cancelled = False
    with transaction.atomic():
        try:
            _fence(run_id, token)
        except RunCancelled:
            if not keep_if_cancelled:
                raise
            cancelled = True
        if memo.pk is None:
            memo.save(force_insert=True)
        else:
            memo.save(force_update=True)
        if then is not None and not cancelled:
            then()
        if suspend is not None and not cancelled:
            status, wake_at, due_at = suspend
            WorkflowRun.objects.filter(pk=run_id, lease_owner=token).update(
                status=status,
                wake_at=wake_at,
                due_at=due_at,
                lease_owner=None,
                lease_expires_at=None,
                attempt=memo.attempt if status == RunStatus.QUEUED else 0,
            )
    if cancelled:
        raise RunCancelled()


def suspend(
    run_id: Any,
    token: str,
    status: str,
    wake_at: datetime | None,
    due_at: datetime | None,
) -> None:
    """Release the run we own into ``status`` (sleeping, waiting or queued)."""
    released = WorkflowRun.objects.filter(
        pk=run_id, lease_owner=token, status=RunStatus.RUNNING
    ).update(
        status=status,
        wake_at=wake_at,
        due_at=due_at,
        lease_owner=None,
        lease_expires_at=None,
    )
    if not released:
        _fence(run_id, token)  # raises RunCancelled or LeaseLost


def finish(run_id: Any, token: str, status: str, *, output: Any = None, error: Any = None) -> bool:
    """Complete or fail the run we own; ``False`` if it was cancelled or taken over."""
    now = timezone.now()
    return bool(
        WorkflowRun.objects.filter(pk=run_id, lease_owner=token, status=RunStatus.RUNNING).update(
            status=status,
            output=output,
            error=error,
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
            due_at=None,
            wake_at=None,
        )
    )


def cancel(run_id: Any, *, reason: str = "cancelled") -> bool:
    """Cancel an active run; ``False`` if it had already finished.

    The lease owner is kept, so a worker in the middle of a step still records that
    step's outcome before it stops.
    """
    return bool(
        WorkflowRun.objects.filter(pk=run_id, status__in=ACTIVE_STATUSES).update(
            status=RunStatus.CANCELLED,
            finished_at=timezone.now(),
            due_at=None,
            wake_at=None,
            error={"type": "Cancelled", "message": reason, "traceback": ""},
        )
    )


def release_for_retry(run_id: Any, token: str, at: datetime) -> None:
    """Give the run back to the queue without recording anything (e.g. a lost broker)."""
    WorkflowRun.objects.filter(pk=run_id, lease_owner=token, status=RunStatus.RUNNING).update(
        status=RunStatus.QUEUED,
        wake_at=at,
        due_at=at,
        lease_owner=None,
        lease_expires_at=None,
    )
