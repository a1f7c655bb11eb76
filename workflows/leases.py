"""Named, guarded transitions of a run, and the fenced writes of its steps.

Every transition is a conditional ``UPDATE … WHERE status IN (allowed)`` whose row count
is checked, so a duplicate message, a late worker or a second dispatcher can never move
a run backwards. A worker owns a run through a lease (``lease_owner`` is a token unique
to one execution); every write it makes is fenced by that token.

On PostgreSQL the hot paths are single statements: a
claim is one ``UPDATE … RETURNING`` joined with the run's event and workspace, and a
step's memo is one ``INSERT … SELECT … FOR SHARE`` that writes only while the run is
still ours. The lease is renewed in the same transaction as a memo only when less than
half of it is left (the heartbeat renews it meanwhile); every other case, and every other
database, takes the portable path: the fence ``UPDATE`` and the memo in one transaction.
"""

import time
from datetime import datetime, timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
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

#: Lease tokens this process holds, and when (``time.monotonic()``) each lease ends.
_held: dict[str, float] = {}
#: Forget every token past this many (a token left behind only costs a slow path).
_HELD_MAX = 10_000


class LeaseLost(BaseException):
    """This worker no longer owns the run (its lease expired and another took over).

    A ``BaseException`` so that no ``except Exception`` in user code can swallow it.
    """


class RunCancelled(BaseException):
    """The run was cancelled while this worker executed it."""


def _lease_until(now: datetime) -> datetime:
    return now + timedelta(seconds=conf.get().LEASE_SECONDS)


def _hold(token: str) -> None:
    if len(_held) >= _HELD_MAX:
        _held.clear()
    _held[token] = time.monotonic() + conf.get().LEASE_SECONDS


def _fresh(token: str) -> bool:
    """Whether more than half of our lease is left, as far as this process knows."""
    ends = _held.get(token)
    return ends is not None and ends - time.monotonic() > conf.get().LEASE_SECONDS / 2


def claim(run_id: Any, token: str) -> WorkflowRun | None:
    """Take the run if it may run now; return it, or ``None`` if it is not ours to run."""
    now = timezone.now()
    lease = _lease_until(now)
    if connection.vendor == "postgresql":
        run = _claim_pg(run_id, token, now, lease)
    else:
        run = _claim_portable(run_id, token, now, lease)
    if run is not None:
        _hold(token)
    return run


def _claim_portable(run_id: Any, token: str, now: datetime, lease: datetime) -> WorkflowRun | None:
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


def _columns(model: type, alias: str) -> str:
    return ", ".join(f'{alias}."{f.column}"' for f in model._meta.concrete_fields)


def _loader(model: type) -> Any:
    """Turn a slice of a raw row into an instance of ``model``, as the ORM would."""
    fields = model._meta.concrete_fields
    names = [f.attname for f in fields]
    converters = [
        (i, fn, f)
        for i, f in enumerate(fields)
        for fn in connection.ops.get_db_converters(f.get_col(model._meta.db_table))
        + f.get_db_converters(connection)
    ]

    def load(values: tuple) -> Any:
        values = list(values)
        for i, fn, f in converters:
            values[i] = fn(values[i], f, connection)
        return model.from_db(connection.alias, names, values)

    return load


#: Prefix of a statement whose transaction need not wait for the disk at commit. Safe
#: for a claim and for the end of a run: a crash of PostgreSQL can only lose them
#: whole, and only if nothing committed after them reached the disk (the log is
#: flushed in order, and every memo is a synchronous commit). A lost claim leaves the
#: run to be rung and claimed again; a lost end leaves it running with an expired
#: lease, so it is resumed, replays its memos and ends again. Either saves a disk flush.
_RELAXED = "SET LOCAL synchronous_commit TO OFF; "


def _past_relaxed(cursor: Any) -> None:
    """Move to the result of the statement after ``_RELAXED`` (psycopg 2 is there)."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3  # PostgreSQL only

    if is_psycopg3:
        cursor.cursor.nextset()


_claim_sql: tuple[str, Any, Any, Any] | None = None


def _claim_statement() -> tuple[str, Any, Any, Any]:
    """One statement: claim the run, close the sleeps that ended, read run, event and
    workspace. Built once per process from the models."""
    global _claim_sql
    if _claim_sql is None:
        event_model = WorkflowRun._meta.get_field("event").related_model
        workspace_model = WorkflowRun._meta.get_field("workspace").related_model
        runs = WorkflowRun._meta.db_table
        sql = f"""
        WITH claimed AS (
            UPDATE "{runs}" AS r
            SET status = '{RunStatus.RUNNING}', lease_owner = %(token)s,
                lease_expires_at = %(lease)s, due_at = %(lease)s, wake_at = NULL,
                started_at = COALESCE(r.started_at, %(now)s)
            FROM (SELECT status, started_at FROM "{runs}" WHERE id = %(id)s) AS old
            WHERE r.id = %(id)s AND (
                (r.status = '{RunStatus.QUEUED}'
                    AND (r.wake_at IS NULL OR r.wake_at <= %(now)s))
                OR (r.status IN ('{RunStatus.SLEEPING}', '{RunStatus.WAITING}')
                    AND r.wake_at <= %(now)s)
                OR (r.status = '{RunStatus.RUNNING}' AND r.lease_expires_at < %(now)s)
            )
            RETURNING {_columns(WorkflowRun, "r")},
                old.status AS old_status, old.started_at AS old_started
        ), closed AS (
            UPDATE "{StepResult._meta.db_table}"
            SET status = '{StepStatus.COMPLETED}', finished_at = %(now)s
            WHERE run_id IN (
                SELECT id FROM claimed
                WHERE NOT (old_status = '{RunStatus.QUEUED}' AND old_started IS NULL)
            ) AND status = '{StepStatus.SLEEPING}' AND wake_at <= %(now)s
        )
        SELECT {_columns(WorkflowRun, "claimed")}, {_columns(event_model, "e")},
            {_columns(workspace_model, "w")}
        FROM claimed
        JOIN "{event_model._meta.db_table}" AS e ON e.id = claimed.event_id
        JOIN "{workspace_model._meta.db_table}" AS w ON w.id = claimed.workspace_id
        """
        _claim_sql = (sql, _loader(WorkflowRun), _loader(event_model), _loader(workspace_model))
    return _claim_sql


def _claim_pg(run_id: Any, token: str, now: datetime, lease: datetime) -> WorkflowRun | None:
    sql, load_run, load_event, load_workspace = _claim_statement()
    params = {"id": run_id, "token": token, "now": now, "lease": lease}
    with connection.cursor() as cursor:
        if not connection.in_atomic_block:
            cursor.execute(_RELAXED + sql, params)
            _past_relaxed(cursor)
        else:
            cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    n_run = len(WorkflowRun._meta.concrete_fields)
    n_event = len(WorkflowRun._meta.get_field("event").related_model._meta.concrete_fields)
    run = load_run(row[:n_run])
    run.event = load_event(row[n_run : n_run + n_event])
    run.workspace = load_workspace(row[n_run + n_event :])
    return run


_insert_sql: tuple[str, list] | None = None


def _insert_fenced(memo: StepResult, run_id: Any, token: str) -> bool:
    """Insert ``memo`` only while ``token`` holds the running run; whether it did.

    ``FOR SHARE`` locks the run row until the insert commits, so a claim or a cancel
    that comes meanwhile waits for it and a new owner's replay sees the memo.
    """
    global _insert_sql
    if _insert_sql is None:
        fields = [f for f in StepResult._meta.concrete_fields if not f.primary_key]
        casts = ", ".join(f"CAST(%s AS {f.cast_db_type(connection)})" for f in fields)
        columns = ", ".join(f'"{f.column}"' for f in fields)
        _insert_sql = (
            f'INSERT INTO "{StepResult._meta.db_table}" ({columns}) SELECT {casts} '
            f'FROM "{WorkflowRun._meta.db_table}" '
            f"WHERE id = %s AND lease_owner = %s AND status = '{RunStatus.RUNNING}' "
            "FOR SHARE RETURNING id",
            fields,
        )
    sql, fields = _insert_sql
    conn = connections[DEFAULT_DB_ALIAS]  # one thread-local lookup, not one per field
    params = [f.get_db_prep_save(f.pre_save(memo, True), conn) for f in fields]
    with conn.cursor() as cursor:
        cursor.execute(sql, [*params, run_id, token])
        row = cursor.fetchone()
    if row is None:
        return False
    memo.pk = row[0]
    memo._state.adding = False
    memo._state.db = conn.alias
    return True


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
        _held.pop(token, None)
    return renewed


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
    if (
        memo.pk is None
        and then is None
        and suspend is None
        and connection.vendor == "postgresql"
        and not connection.in_atomic_block
        and _fresh(token)
        and _insert_fenced(memo, run_id, token)
    ):
        return
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
    if suspend is not None:
        _held.pop(token, None)


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
    _held.pop(token, None)
    if not released:
        _fence(run_id, token)  # raises RunCancelled or LeaseLost


def finish(run_id: Any, token: str, status: str, *, output: Any = None, error: Any = None) -> bool:
    """Complete or fail the run we own; ``False`` if it was cancelled or taken over.

    On PostgreSQL the transaction this runs in commits without waiting for the disk
    (see ``_RELAXED``): call it in the transaction that ends the run, and only there.
    """
    now = timezone.now()
    _held.pop(token, None)
    if connection.vendor == "postgresql":
        # The last statement of every run: raw SQL spares the ORM's compilation.
        field = WorkflowRun._meta.get_field("output")
        with connection.cursor() as cursor:
            cursor.execute(
                f'{_RELAXED}UPDATE "{WorkflowRun._meta.db_table}" SET status = %s, output = %s, '
                "error = %s, finished_at = %s, lease_owner = NULL, lease_expires_at = NULL, "
                "due_at = NULL, wake_at = NULL "
                f"WHERE id = %s AND lease_owner = %s AND status = '{RunStatus.RUNNING}'",
                [
                    status,
                    field.get_db_prep_save(output, connection),
                    field.get_db_prep_save(error, connection),
                    now,
                    run_id,
                    token,
                ],
            )
            _past_relaxed(cursor)
            return cursor.rowcount == 1
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
    _held.pop(token, None)
    WorkflowRun.objects.filter(pk=run_id, lease_owner=token, status=RunStatus.RUNNING).update(
        status=RunStatus.QUEUED,
        wake_at=at,
        due_at=at,
        lease_owner=None,
        lease_expires_at=None,
    )
