"""The run store: the only code that writes a run's status.

Every transition is a named, conditional ``UPDATE … WHERE status IN (allowed)`` whose
row count is checked, so a duplicate message, a late worker or a second dispatcher can
never move a run backwards:

- :func:`insert` stores new queued runs; :func:`claim` takes a runnable run;
- :func:`save_step` records a step's memo, fenced by the lease (and may :func:`suspend`
  the run in the same transaction); :func:`renew` extends the lease;
- :func:`suspend` releases a run into sleeping, waiting or queued; :func:`wake` puts a
  waiting run back in the queue; :func:`release_for_retry` gives a run back untouched;
- :func:`pause` stops it at a non-determinism, :func:`resume` queues it again;
- :func:`finish` completes or fails it; :func:`cancel` cancels it.

A worker owns a run through a lease (``lease_owner`` is a token unique to one
execution); every write it makes is fenced by that token. On PostgreSQL the claim, the
memo insert and the end of a run take the single-statement paths of
:mod:`workflows.runstore_pg`; the lease is renewed in the same transaction as a memo only
when less than half of it is left (the heartbeat renews it meanwhile). Every other case,
and every other database, takes the portable path: the fence ``UPDATE`` and the memo in
one transaction.
"""

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Case, F, PositiveIntegerField, Q, Value, When
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from workflows import conf, models, runstore_pg, slots
from workflows.exceptions import LeaseLost, RunCancelled, error_record
from workflows.models import ACTIVE_STATUSES, RunStatus, StepResult, StepStatus, WorkflowRun

#: Lease tokens this process holds, and when (``time.monotonic()``) each lease ends.
_held: dict[str, float] = {}
#: Forget every token past this many (a token left behind only costs a slow path).
_HELD_MAX = 10_000
#: The concurrency groups of the runs this process holds, by lease token: whoever
#: releases such a run hands its slots on (see :mod:`workflows.slots`).
_groups: dict[str, tuple[str, str]] = {}


def _lease_until(now: datetime) -> datetime:
    return now + timedelta(seconds=conf.get().LEASE_SECONDS)


def _hold(token: str) -> None:
    if len(_held) >= _HELD_MAX:
        _held.clear()
    _held[token] = time.monotonic() + conf.get().LEASE_SECONDS


#: Whether a statement executed now is a transaction of its own (no atomic block, and
#: autocommit on): where the fast paths may run.
on_its_own = runstore_pg.on_its_own


def fresh(token: str) -> bool:
    """Whether more than half of our lease is left, as far as this process knows."""
    ends = _held.get(token)
    return ends is not None and ends - time.monotonic() > conf.get().LEASE_SECONDS / 2


def ring_due(now: datetime) -> datetime:
    """The ``due_at`` of a run just queued: when the dispatcher rings if no worker came."""
    return now + timedelta(seconds=conf.get().RING_TIMEOUT_SECONDS)


# --- new runs -------------------------------------------------------------------------
def insert(runs: Sequence[WorkflowRun], *, skip_repeats: bool = False) -> None:
    """Store new queued runs (see :func:`workflows.lifecycle.start`).

    With ``skip_repeats``, a run that the unique (event, workflow) constraint refuses (a
    repeated or racing delivery of its event) is skipped, not an error.
    """
    if any(run.status != RunStatus.QUEUED for run in runs):
        raise ValueError("a new run starts queued")
    if len(runs) == 1 and connection.vendor == "postgresql":
        runstore_pg.insert_run(runs[0], skip_repeats=skip_repeats)  # the send of one event
    elif runs:
        WorkflowRun.objects.bulk_create(runs, ignore_conflicts=skip_repeats, batch_size=1000)


def stored(run_ids: Sequence[Any]) -> set[Any]:
    """Which of ``run_ids`` exist (after an :func:`insert` that skipped repeats)."""
    return set(WorkflowRun.objects.filter(pk__in=run_ids).values_list("pk", flat=True))


def take_due(limit: int, *, ahead: float = 0.0) -> list[tuple[Any, datetime]]:
    """In a transaction: up to ``limit`` active runs whose ``due_at`` comes within
    ``ahead`` seconds, as ``(id, due_at)``: the caller rings each at its ``due_at``.

    Their ``due_at`` moves ``RING_TIMEOUT_SECONDS`` past the later of it and now, so they
    are rung again only if this bell goes unanswered too. Rows locked by another
    dispatcher are skipped. The runs come in line order (``order_at``: creation time
    less the priority).
    """
    now = timezone.now()
    due = WorkflowRun.objects.due(now + timedelta(seconds=ahead)).order_by("order_at")
    if connection.features.has_select_for_update_skip_locked:
        due = due.select_for_update(skip_locked=True)
    taken = list(due.values_list("pk", "due_at")[:limit])
    if taken:
        timeout = timedelta(seconds=conf.get().RING_TIMEOUT_SECONDS)
        WorkflowRun.objects.filter(pk__in=[pk for pk, _ in taken]).update(
            due_at=Greatest(F("due_at"), Value(now)) + timeout
        )
    return taken


# --- claiming and the lease -----------------------------------------------------------
def claim(run_id: Any, token: str, *, shaped: bool = False) -> WorkflowRun | None:
    """Take the run if it may run now; return it, or ``None`` if it is not ours to run.

    A run that flow control may hold back (a concurrency group, a first start under a
    throttle) is claimed in a transaction that takes its groups' locks and asks
    :mod:`workflows.slots`; one that may not start is put back in line there.
    ``shaped``: the caller knows the run is such a run (it was handed a concurrency
    slot), so the claim asks about flow control first; a wrong hint costs one statement.
    A run this process handed a slot to (:func:`workflows.slots.handed_hint`) is
    claimed by the groups' question alone, one statement.
    """
    now = timezone.now()
    lease = _lease_until(now)
    run = None
    hint = slots.handed_hint(run_id)
    if hint is None and not shaped:
        run, hint = _claim_free(run_id, token, now, lease)
        # Not claimed: not runnable (a late or repeated message), or flow control may
        # hold it back (``hint``: what its claim asks, as the statement saw it).
    if hint is not None:
        # Handed a slot by this process, or a hint of the free claim: straight to the
        # groups' question (which checks everything again).
        run = _claim_admitted(run_id, hint, token, now, lease)
    if run is None and (hint is not None or shaped or connection.vendor != "postgresql"):
        found = _shaped(run_id, now)
        if found is not None:
            run = _claim_shaped(found, token, now, lease, asked=hint is not None)
        elif shaped and hint is None:
            run, _ = _claim_free(run_id, token, now, lease)
    if run is not None:
        _hold(token)
        if run.slot_1:
            if len(_groups) >= _HELD_MAX:
                _groups.clear()
            _groups[token] = (run.slot_1, run.slot_2)
    return run


def _claim_free(
    run_id: Any, token: str, now: datetime, lease: datetime
) -> tuple[WorkflowRun | None, dict[str, Any] | None]:
    """Claim the run if it is runnable and no flow control may hold it back; if not
    claimed, on PostgreSQL, what the claim of a run that flow control may hold back
    asks of it (see :func:`runstore_pg.claim`), if it may be one."""
    if connection.vendor == "postgresql":
        return runstore_pg.claim(run_id, token, now, lease)
    return _claim_portable(run_id, token, now, lease, models.unshaped(now)), None


def _shaped(run_id: Any, now: datetime) -> dict[str, Any] | None:
    """What flow control asks of the run, if it is runnable and may be held back."""
    if connection.vendor == "postgresql":
        return runstore_pg.shaped(run_id, now, ("id", *slots.FIELDS))
    return (
        WorkflowRun.objects.filter(Q(pk=run_id) & models.runnable(now))
        .exclude(models.unshaped(now))
        .values("id", *slots.FIELDS)
        .first()
    )


def _claim_shaped(
    shaped: dict[str, Any], token: str, now: datetime, lease: datetime, *, asked: bool = False
) -> WorkflowRun | None:
    """Claim a runnable run that flow control may hold back, or put it back in line.
    ``asked``: :func:`_claim_admitted` just did not claim it; do not ask again."""
    run_id = shaped["id"]
    if not asked:
        run = _claim_admitted(run_id, shaped, token, now, lease)
        if run is not None:
            return run
    # A group is full (or a throttle asks): ask again, in a transaction that can put
    # the run back in line.
    postgres = connection.vendor == "postgresql"
    limits = slots.limits_of(shaped["workflow_id"], (shaped["slot_1"], shaped["slot_2"]))
    with transaction.atomic():
        held = slots.throttled(run_id, shaped, now, relax=postgres)
        if held is None:
            groups = [group for group, _ in limits]
            if postgres:
                # The groups' locks, then the count of each group and the claim in one
                # statement (its snapshot taken under the locks), in one round trip.
                run = runstore_pg.claim_admitted(
                    run_id, token, now, lease, limits, slots.lock_keys(groups)
                )
                if run is not None:
                    return run
            else:
                slots.lock(groups)
            held = slots.full(run_id, limits, now)
            if held is None:
                # Room everywhere: on PostgreSQL the run was no longer runnable.
                return None if postgres else _claim_portable(run_id, token, now, lease, Q())
        slots.hold(run_id, shaped, held, now)
        return None


def _claim_admitted(
    run_id: Any, shaped: dict[str, Any], token: str, now: datetime, lease: datetime
) -> WorkflowRun | None:
    """The usual case of a run in concurrency groups, rung because its groups have room
    (``shaped``: its :data:`workflows.slots.FIELDS`): on PostgreSQL, outside a
    transaction, with no throttle to ask, the groups' locks and the claim are one
    round trip, which PostgreSQL runs as one transaction of its own (no BEGIN and
    COMMIT round trips; see :func:`runstore_pg.claim_admitted`). ``None`` if it did not
    claim the run (not runnable, or no room), or could not ask that way."""
    if connection.vendor != "postgresql" or not on_its_own(connection):
        return None
    if slots.asks_throttle(shaped):
        return None
    limits = slots.limits_of(shaped["workflow_id"], (shaped["slot_1"], shaped["slot_2"]))
    keys = slots.lock_keys(group for group, _ in limits)
    return runstore_pg.claim_admitted(run_id, token, now, lease, limits, keys)


def _claim_portable(
    run_id: Any, token: str, now: datetime, lease: datetime, condition: Q
) -> WorkflowRun | None:
    with transaction.atomic():
        claimed = WorkflowRun.objects.filter(
            Q(pk=run_id) & models.runnable(now) & condition
        ).update(
            status=RunStatus.RUNNING,
            lease_owner=token,
            lease_expires_at=lease,
            due_at=lease,
            wake_at=None,
            held_by="",
            started_at=Coalesce("started_at", now),
            # Taking over from an expired lease: the execution before was lost.
            lost_executions=Case(
                When(status=RunStatus.RUNNING, then=F("lost_executions") + 1),
                default=F("lost_executions"),
                output_field=PositiveIntegerField(),
            ),
        )
        if not claimed:
            return None
        # Sleeps that have ended are done: mark them so the timeline shows it.
        StepResult.objects.filter(
            run_id=run_id, status=StepStatus.SLEEPING, wake_at__lte=now
        ).update(status=StepStatus.COMPLETED, finished_at=now)
    return WorkflowRun.objects.select_related("event", "workspace").get(pk=run_id)


def _let_go(token: str) -> None:
    """The run of ``token`` no longer executes here: forget it, and hand on its slots.

    Call it after the statement that released the run, in its transaction (the bell
    rings once that commits).
    """
    _held.pop(token, None)
    groups = _groups.pop(token, None)
    if groups is not None:
        slots.hand_over(groups)


def _forget(token: str) -> None:
    """The run of ``token`` is no longer ours (taken over or cancelled): forget it."""
    _held.pop(token, None)
    _groups.pop(token, None)


def renew(run_id: Any, token: str) -> bool:
    """Extend the lease; ``False`` if the run is no longer ours or no longer running."""
    lease = _lease_until(timezone.now())
    renewed = bool(
        WorkflowRun.objects.filter(pk=run_id, lease_owner=token, status=RunStatus.RUNNING).update(
            lease_expires_at=lease, due_at=lease
        )
    )
    if renewed:
        _hold(token)
    else:
        _forget(token)
    return renewed


def _fence(run_id: Any, token: str) -> None:
    """Inside a transaction: check we still own the running run, and renew the lease."""
    if renew(run_id, token):
        return
    state = WorkflowRun.objects.filter(pk=run_id).values_list("status", "lease_owner").first()
    if state == (RunStatus.CANCELLED, token):
        raise RunCancelled()
    raise LeaseLost()


def set_deadline(run: WorkflowRun, deadline: datetime | None) -> None:
    """Record the run's finish deadline (``timeout_at``) if it changed."""
    if run.timeout_at != deadline:
        WorkflowRun.objects.filter(pk=run.pk).update(timeout_at=deadline)
        run.timeout_at = deadline


# --- steps ------------------------------------------------------------------------------
def save_step(
    run_id: Any,
    token: str,
    memo: StepResult,
    *,
    then: Callable[[], None] | None = None,
    suspend: tuple[str, datetime | None, datetime | None] | None = None,
    keep_if_cancelled: bool = False,
    clear_lost: bool = False,
) -> bool:
    """Store a step's memo in one transaction, fenced by the lease; whether it has
    committed on return (no transaction was open around the call).

    ``then`` is called inside the same transaction after the memo is saved (used by
    ``send_event`` to store its events). ``suspend`` = (status, wake_at, due_at) also
    releases the run in that transaction. When the run was cancelled meanwhile, the memo
    of a step body that already ran is kept (``keep_if_cancelled``); nothing else is
    written, and :class:`RunCancelled` stops the execution. ``clear_lost`` resets the
    run's count of lost executions (the step they were counted against is recorded).
    """
    conn = transaction.get_connection()  # one lookup of the thread's connection
    alone = on_its_own(conn)
    if (
        alone
        and memo.pk is None
        and then is None
        and suspend is None
        and not clear_lost
        and conn.vendor == "postgresql"
        and fresh(token)
        and runstore_pg.insert_fenced(memo, run_id, token)
    ):
        return True
    # The portable path; also where a fast insert that was refused finds out why.
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
        if clear_lost:
            WorkflowRun.objects.filter(pk=run_id, lease_owner=token).update(lost_executions=0)
        if then is not None and not cancelled:
            then()
        if suspend is not None and not cancelled:
            status, wake_at, due_at = suspend
            attempt = memo.attempt if status == RunStatus.QUEUED else 0
            _release(run_id, token, status, wake_at, due_at, attempt)
    if cancelled:
        _forget(token)
        raise RunCancelled()
    if suspend is not None:
        _let_go(token)
    return alone


# --- leaving the worker -----------------------------------------------------------------
def _release(
    run_id: Any,
    token: str,
    status: str,
    wake_at: datetime | None,
    due_at: datetime | None,
    attempt: int | None = None,
) -> int:
    """The release itself; ``attempt`` (the run's retry number) is kept when ``None``."""
    if status not in (RunStatus.SLEEPING, RunStatus.WAITING, RunStatus.QUEUED):
        raise ValueError(f"a run is released into sleeping, waiting or queued, not {status!r}")
    fields: dict[str, Any] = {"attempt": attempt} if attempt is not None else {}
    return WorkflowRun.objects.filter(
        pk=run_id, lease_owner=token, status=RunStatus.RUNNING
    ).update(
        status=status,
        wake_at=wake_at,
        due_at=due_at,
        lease_owner=None,
        lease_expires_at=None,
        **fields,
    )


def suspend(
    run_id: Any,
    token: str,
    status: str,
    wake_at: datetime | None,
    due_at: datetime | None,
) -> None:
    """Release the run we own into ``status`` (sleeping, waiting or queued).

    Raises :class:`RunCancelled` or :class:`LeaseLost` when the run is no longer ours.
    """
    released = _release(run_id, token, status, wake_at, due_at)
    if not released:
        _forget(token)
        _fence(run_id, token)  # raises RunCancelled or LeaseLost
    _let_go(token)


def wake(run_ids: Iterable[Any]) -> list[Any]:
    """Put waiting runs back in the queue; return the ids that were waiting."""
    woken = []
    due = ring_due(timezone.now())
    for run_id in run_ids:
        if WorkflowRun.objects.filter(pk=run_id, status=RunStatus.WAITING).update(
            status=RunStatus.QUEUED, wake_at=None, due_at=due
        ):
            woken.append(run_id)
    return woken


def release_for_retry(run_id: Any, token: str, at: datetime) -> None:
    """Give the run back to the queue without recording anything (e.g. a lost broker)."""
    WorkflowRun.objects.filter(pk=run_id, lease_owner=token, status=RunStatus.RUNNING).update(
        status=RunStatus.QUEUED,
        wake_at=at,
        due_at=at,
        lease_owner=None,
        lease_expires_at=None,
    )
    _let_go(token)


# --- ending ---------------------------------------------------------------------------
def finish(run_id: Any, token: str, status: str, *, output: Any = None, error: Any = None) -> bool:
    """Complete or fail the run we own; ``False`` if it was cancelled or taken over.

    On PostgreSQL the transaction this runs in commits without waiting for the disk
    (see ``runstore_pg.RELAXED``): call it in the transaction that ends the run, and
    only there.
    """
    if status not in (RunStatus.COMPLETED, RunStatus.FAILED):
        raise ValueError(f"a run finishes completed or failed, not {status!r}")
    now = timezone.now()
    if connection.vendor == "postgresql":
        ended = runstore_pg.finish(run_id, token, status, output, error, now)
    else:
        ended = bool(
            WorkflowRun.objects.filter(
                pk=run_id, lease_owner=token, status=RunStatus.RUNNING
            ).update(
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
    if ended:
        _let_go(token)
    else:
        _forget(token)
    return ended


def finish_with_event(
    run_id: Any,
    token: str,
    output: Any,
    event: Any,
    lock_key: int,
    memo: StepResult | None = None,
) -> bool | None:
    """On PostgreSQL, outside a transaction: complete the run we own and store ``event``,
    its ``run.finished`` (and ``memo``, its last step's, if given), and hand on the
    concurrency slot it holds, in one round trip (:func:`runstore_pg.finish_with_event`).

    ``None`` when that cannot be, and nothing was written: the run holds slots of
    several lines (:func:`workflows.slots.one_line`; they are handed on in the
    transaction that ends it), or a wait for the event is recorded (``lock_key``: the
    emitters' lock of its name). Otherwise whether the run was ours to end, as
    :func:`finish`.
    """
    groups = _groups.get(token)
    line = None if groups is None else slots.one_line(groups)
    if groups is not None and line is None:
        return None
    now = timezone.now()
    ended, head = runstore_pg.finish_with_event(
        run_id, token, output, now, event, lock_key, memo, line, ring_due(now)
    )
    if ended is not None:
        _forget(token)  # ended (its slot handed on with it), or no longer ours
    if head is not None:
        slots.ring_handed(head)
    return ended


def pause(run_id: Any, token: str, error: Any) -> bool:
    """Pause the run we own (its memos no longer fit the code); ``False`` if it is no
    longer ours (cancelled or taken over).

    The worker is released and nothing rings for the run (no ``due_at``, no
    ``wake_at``) until :func:`resume`; ``error`` says where the code and the record part.
    """
    paused = bool(
        WorkflowRun.objects.filter(pk=run_id, lease_owner=token, status=RunStatus.RUNNING).update(
            status=RunStatus.PAUSED,
            error=error,
            lease_owner=None,
            lease_expires_at=None,
            due_at=None,
            wake_at=None,
        )
    )
    if paused:
        _let_go(token)
    else:
        _forget(token)
    return paused


def resume(run_id: Any) -> bool:
    """Queue a paused run again (to execute on the code deployed now); ``False`` if it
    was not paused. Its error is cleared: the next execution writes its own outcome."""
    return bool(
        WorkflowRun.objects.filter(pk=run_id, status=RunStatus.PAUSED).update(
            status=RunStatus.QUEUED,
            error=None,
            wake_at=None,
            due_at=ring_due(timezone.now()),
        )
    )


def cancel(run_id: Any, *, reason: str = "cancelled") -> bool:
    """Cancel an active run; ``False`` if it had already finished.

    The lease owner is kept, so a worker in the middle of a step still records that
    step's outcome before it stops. A run that held concurrency slots hands them on.
    """
    groups = WorkflowRun.objects.filter(pk=run_id).values_list("slot_1", "slot_2").first()
    cancelled = bool(
        WorkflowRun.objects.filter(pk=run_id, status__in=ACTIVE_STATUSES).update(
            status=RunStatus.CANCELLED,
            finished_at=timezone.now(),
            due_at=None,
            wake_at=None,
            error=error_record("Cancelled", reason),
        )
    )
    if cancelled and groups is not None and groups[0]:
        slots.hand_over(groups)
    return cancelled
