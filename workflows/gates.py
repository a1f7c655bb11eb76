"""Admission: whether and how an event starts a run of a workflow with ``rate_limit``,
``debounce``, ``batch_events``, ``singleton`` or ``idempotency`` (options checked by
:mod:`workflows.admission`; see docs/flow-control.md).

Two stages, both inside the transaction that stores the event:

1. *Collecting* (``debounce``, ``batch_events``): the event is recorded on its key's
   :class:`~workflows.models.GateState` (the latest event of a debounce; a new member of
   the open batch, stored as a :class:`~workflows.models.BatchEvent`). A batch that
   reaches ``max_size`` goes to stage 2 at once; otherwise the row's ``due_at`` is
   when it fires (in its own transaction): by a message timed for it when the timer
   starts within ``ETA_HORIZON_SECONDS`` (:func:`fire_scopes`; a message that finds
   its debounce moved later times one for the new ``due_at``), else, and as the
   backstop, by the dispatcher (:func:`fire_due`).
2. *Creating* (``idempotency``, ``rate_limit``, ``singleton``): whether the run that
   would start now may be created. A refused event gets an
   :class:`~workflows.models.EventSkip` with the reason.

Exactness comes from locks, not from counting after the fact: every key's row is
locked (an upsert) before it is read, and the unique index of
:class:`~workflows.models.IdempotencyRecord` decides between racing senders. Locks are
taken in one order in every transaction (collecting rows, then idempotency values, then
creation rows, each sorted), so two senders or a sender and a dispatcher never
deadlock. On SQLite, the transaction already holds the database's write lock.
"""

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from eventbus.models import Event
from workflows import conf, doorbell, expressions, lifecycle, registry
from workflows.exceptions import UnknownWorkflowError
from workflows.models import (
    ACTIVE_VALUES,
    BatchEvent,
    EventSkip,
    GateKind,
    GateState,
    IdempotencyRecord,
    SkipReason,
    WorkflowRun,
)
from workflows.payloads import event_dict

logger = logging.getLogger("workflows.gates")

#: The longest scope a gate row (and so a ``fire_gates`` message) can name.
SCOPE_MAX_LENGTH = GateState._meta.get_field("scope").max_length

#: Fields of a gate row that decisions write back (the lock row's key fields excepted).
_STATE_FIELDS = ("stamps", "run_id", "event_id", "batch_id", "size", "first_at", "due_at")


@dataclass
class _Candidate:
    """A run that would be created now: its trigger event, workflow and batch."""

    event: Event
    wf: registry.Workflow
    batch_id: uuid.UUID | None = None
    #: The scopes of its rate-limit and singleton rows (each key evaluated once).
    rate_scope: str = ""
    single_scope: str = ""


def admit(pairs: Sequence[tuple[Event, registry.Workflow]], now: datetime) -> list[WorkflowRun]:
    """Apply the admission options to newly emitted ``(event, workflow)`` pairs.

    In the emitting transaction; returns the runs started now.
    """
    collecting = [(e, wf) for e, wf in pairs if wf.admission.collects]
    candidates = [_Candidate(e, wf) for e, wf in pairs if not wf.admission.collects]
    if collecting:
        candidates += _collect(collecting, now)
    return _create(candidates, now)


def fire_due(limit: int, now: datetime | None = None) -> int:
    """Start the runs of up to ``limit`` debounces and batches whose timer has come.

    Each row is locked (``SKIP LOCKED`` where the database has it) and cleared by a
    conditional update on its ``due_at``: only the dispatcher whose update matched fires
    it, so two dispatchers never fire one debounce or batch twice. Returns how many
    rows were taken.
    """
    now = now or timezone.now()
    if not GateState.objects.due(now).exists():
        return 0  # the common pass: one indexed query, no transaction, no lock
    return _fire(GateState.objects.due(now).order_by("due_at"), limit, now)


def fire_scopes(scopes: Sequence[str], now: datetime | None = None) -> tuple[int, list]:
    """Fire those of the debounces and batches ``scopes`` whose timer has come (a timed
    message's task); return how many, and the ``(scope, due_at)`` of those whose timer
    is still ahead (a debounce moved by a later event), for the caller to time again."""
    now = now or timezone.now()
    ahead = list(
        GateState.objects.filter(pk__in=scopes, due_at__gt=now).values_list("pk", "due_at")
    )
    due = GateState.objects.due(now).filter(pk__in=scopes)
    return _fire(due, len(scopes), now), ahead


def _fire(due: Any, limit: int, now: datetime) -> int:
    """Fire the gate rows of the queryset ``due`` (up to ``limit``), each once."""
    with transaction.atomic():
        if connection.features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True)
        rows = list(due[:limit])
        fired: list[tuple[GateState, registry.Workflow | None]] = []
        for row in rows:
            claimed = GateState.objects.filter(pk=row.pk, due_at=row.due_at).update(
                event=None, batch_id=None, size=0, first_at=None, due_at=None
            )
            if claimed and row.event_id is not None:
                fired.append((row, _registered(row.workflow_id)))
        events = Event.objects.select_related("workspace").in_bulk(
            [row.event_id for row, wf in fired if wf is not None]
        )
        _create(
            [
                _Candidate(events[row.event_id], wf, row.batch_id)
                for row, wf in fired
                if wf is not None and row.event_id in events
            ],
            now,
        )
    return len(rows)


def bring_forward(now: datetime) -> None:
    """Move every pending debounce and batch timer to ``now`` (``testing.drain``)."""
    GateState.objects.filter(due_at__gt=now).update(due_at=now)


def purge_idempotency(limit: int, now: datetime | None = None) -> int:
    """Delete up to ``limit`` expired idempotency values (index on ``expires_at``)."""
    now = now or timezone.now()
    ids = list(
        IdempotencyRecord.objects.filter(expires_at__lte=now)
        .order_by("expires_at")
        .values_list("pk", flat=True)[:limit]
    )
    return IdempotencyRecord.objects.filter(pk__in=ids).delete()[0] if ids else 0


# --- stage 1: collecting -----------------------------------------------------------
def _collect(pairs: list[tuple[Event, registry.Workflow]], now: datetime) -> list[_Candidate]:
    """Record debounced and batched events; return the batches that filled up."""
    keyed = []
    for event, wf in pairs:
        option = wf.admission.debounce or wf.admission.batch
        kind = GateKind.DEBOUNCE if wf.admission.debounce else GateKind.BATCH
        keyed.append((event, wf, _scope(kind, wf, event, option.key)))
    states = _lock({scope: (kind_of(scope), wf, e) for e, wf, scope in keyed})
    skips: list[EventSkip] = []
    members: list[BatchEvent] = []
    full: list[_Candidate] = []
    arrived = {event.pk: event for event, _ in pairs}
    started: set[str] = set()  # timers that start now (a moved one has its message)
    for event, wf, scope in keyed:
        state = states[scope]
        debounce, batch = wf.admission.debounce, wf.admission.batch
        if debounce is not None:
            if state.event_id is not None:
                skips.append(_skip(state.event_id, wf, SkipReason.DEBOUNCED, f"event {event.pk}"))
            else:
                state.first_at = now
                started.add(scope)
            state.event_id = event.pk
            state.due_at = now + debounce.period
            if debounce.timeout is not None:
                state.due_at = min(state.due_at, state.first_at + debounce.timeout)
        elif batch is not None:
            if state.batch_id is None:
                state.batch_id, state.size, state.event_id = uuid.uuid4(), 0, event.pk
                state.first_at, state.due_at = now, now + batch.timeout
                started.add(scope)
            members.append(
                BatchEvent(
                    batch_id=state.batch_id, workflow_id=wf.id, event=event, position=state.size
                )
            )
            state.size += 1
            if state.size >= batch.max_size:
                full.append(_Candidate(_event(state.event_id, arrived), wf, state.batch_id))
                state.batch_id, state.size, state.event_id = None, 0, None
                state.first_at = state.due_at = None
    BatchEvent.objects.bulk_create(members, batch_size=1000)
    EventSkip.objects.bulk_create(skips, batch_size=1000)
    _save(states.values())
    doorbell.time_gates((scope, states[scope].due_at) for scope in started)
    return full


def kind_of(scope: str) -> str:
    """The :class:`~workflows.models.GateKind` a scope text belongs to."""
    return scope.split(":", 1)[0]


def _event(event_id: Any, arrived: dict[Any, Event]) -> Event:
    """A full batch's first event: one of those just emitted, or an earlier one, read."""
    if event_id in arrived:
        return arrived[event_id]
    return Event.objects.select_related("workspace").get(pk=event_id)


# --- stage 2: creating -------------------------------------------------------------
def _create(candidates: list[_Candidate], now: datetime) -> list[WorkflowRun]:
    """Create the runs the creation gates let through; record why the others got none."""
    if not candidates:
        return []
    skips: list[EventSkip] = []
    gated = [c for c in candidates if c.wf.admission.gates_creation]
    claimed = _claim_idempotency(gated, now, skips)
    gated = [c for c in gated if id(c) not in claimed.refused]
    scopes: dict[str, tuple[str, registry.Workflow, Event]] = {}
    for c in gated:
        rate, single = c.wf.admission.rate_limit, c.wf.admission.singleton
        if rate is not None:
            c.rate_scope = _scope(GateKind.RATE_LIMIT, c.wf, c.event, rate.key)
            scopes[c.rate_scope] = (GateKind.RATE_LIMIT, c.wf, c.event)
        if single is not None:
            c.single_scope = _scope(GateKind.SINGLETON, c.wf, c.event, single.key)
            scopes[c.single_scope] = (GateKind.SINGLETON, c.wf, c.event)
    states = _lock(scopes)
    active = _active_holders(states.values())
    now_ms = int(now.timestamp() * 1000)
    runs: list[tuple[WorkflowRun, registry.Workflow]] = []
    to_cancel: list[tuple[Any, str]] = []
    refused: list[_Candidate] = []
    for c in candidates:
        if id(c) in claimed.refused:
            continue
        rate, single = c.wf.admission.rate_limit, c.wf.admission.singleton
        rate_state = single_state = None
        if rate is not None:
            rate_state = states[c.rate_scope]
            since = now_ms - int(rate.period.total_seconds() * 1000)
            rate_state.stamps = [stamp for stamp in rate_state.stamps if stamp > since]
            if len(rate_state.stamps) >= rate.limit:
                detail = f"{rate.limit} run(s) per {rate.period} reached"
                skips.append(_skip(c.event.pk, c.wf, SkipReason.RATE_LIMITED, detail))
                refused.append(c)
                continue
        if single is not None:
            single_state = states[c.single_scope]
            holder = single_state.run_id
            if holder in active and single.mode == "skip":
                skips.append(_skip(c.event.pk, c.wf, SkipReason.SINGLETON, f"run {holder}"))
                refused.append(c)
                continue
            if holder in active:
                to_cancel.append((holder, f"singleton: replaced by event {c.event.pk}"))
                active.discard(holder)
        run = lifecycle.new_run(c.event, c.wf, now=now)
        runs.append((run, c.wf))
        if rate_state is not None:
            rate_state.stamps.append(now_ms)
        if single_state is not None:
            single_state.run_id = run.pk
            active.add(run.pk)
    claimed.release(refused)
    if skips:
        EventSkip.objects.bulk_create(skips, batch_size=1000)
    _save(states.values())
    started = lifecycle.start(runs, skip_repeats=True) if runs else []
    for run_id, reason in to_cancel:
        lifecycle.cancel(run_id, reason=reason)
    return started


class _Claims:
    """The idempotency values this transaction claimed, and the candidates refused."""

    def __init__(self) -> None:
        self.refused: set[int] = set()
        self.mine: dict[int, IdempotencyRecord] = {}

    def release(self, refused: list[_Candidate]) -> None:
        """Give back the values of candidates a later gate refused: they started no run."""
        pks = [self.mine[id(c)].pk for c in refused if id(c) in self.mine]
        if pks:
            IdempotencyRecord.objects.filter(pk__in=pks).delete()


def _claim_idempotency(candidates: list[_Candidate], now: datetime, skips: list) -> _Claims:
    """Claim each candidate's idempotency value; refuse those another event holds.

    Expired rows of the values are deleted first; the insert then either stores our row
    or meets the unique index (blocking on PostgreSQL until a racing sender commits),
    and reading the rows back tells who holds each value.
    """
    claims = _Claims()
    window = timedelta(seconds=conf.get().IDEMPOTENCY_WINDOW_SECONDS)
    wanted: dict[tuple[str, Any, str], _Candidate] = {}
    for c in candidates:
        expression = c.wf.admission.idempotency
        if expression is None:
            continue
        try:
            value = expression.evaluate(event_dict(c.event), c.event.workspace.slug)
        except expressions.EvaluationError as exc:
            logger.warning(
                "%s: %r did not evaluate for event %s: %s; no de-duplication for it",
                expression.where,
                expression.source,
                c.event.pk,
                exc,
            )
            continue
        slot = (c.wf.id, c.event.workspace_id, expressions.as_key(value))
        if slot in wanted:  # twice in one send: the first event wins
            claims.refused.add(id(c))
            skips.append(
                _skip(c.event.pk, c.wf, SkipReason.IDEMPOTENT, f"event {wanted[slot].event.pk}")
            )
            continue
        wanted[slot] = c
    if not wanted:
        return claims
    by_owner: dict[tuple[str, Any], list[str]] = {}
    for wf_id, ws_id, key in wanted:
        by_owner.setdefault((wf_id, ws_id), []).append(key)
    for (wf_id, ws_id), keys in by_owner.items():
        IdempotencyRecord.objects.filter(
            workflow_id=wf_id, workspace_id=ws_id, key__in=keys, expires_at__lte=now
        ).delete()
    rows = [
        IdempotencyRecord(
            workflow_id=wf_id,
            workspace_id=ws_id,
            key=key,
            event_id=c.event.pk,
            created_at=now,
            expires_at=now + window,
        )
        for (wf_id, ws_id, key), c in sorted(wanted.items(), key=lambda item: str(item[0]))
    ]
    IdempotencyRecord.objects.bulk_create(rows, ignore_conflicts=True)
    for (wf_id, ws_id), keys in by_owner.items():
        held = IdempotencyRecord.objects.filter(workflow_id=wf_id, workspace_id=ws_id, key__in=keys)
        for record in held:
            c = wanted.get((wf_id, ws_id, record.key))
            if c is None:
                continue
            if record.event_id == c.event.pk:
                claims.mine[id(c)] = record
            else:
                claims.refused.add(id(c))
                skips.append(
                    _skip(c.event.pk, c.wf, SkipReason.IDEMPOTENT, f"event {record.event_id}")
                )
    return claims


# --- the rows --------------------------------------------------------------------------
def _scope(kind: str, wf: registry.Workflow, event: Event, key: Any) -> str:
    """The text naming one key of one gate: kind, workflow, workspace and key value."""
    value = key.key(event_dict(event), event.workspace.slug) if key is not None else ""
    return f"{kind}:{wf.id}:{event.workspace_id}:{value}"


def _lock(scopes: dict[str, tuple[str, registry.Workflow, Event]]) -> dict[str, GateState]:
    """Create (if new) and lock the rows of ``scopes``, in sorted order; return them.

    One statement: an upsert whose ``ON CONFLICT … DO UPDATE`` locks an existing row on
    PostgreSQL (and waits for a racing insert of a new one to commit, then locks that),
    returning the row as its last writer committed it, with the status of the run a
    singleton row names (``holder_status``).
    """
    if not scopes:
        return {}
    order = sorted(scopes)
    table, runs = GateState._meta.db_table, WorkflowRun._meta.db_table
    empty = GateState._meta.get_field("stamps").get_db_prep_value([], connection)
    params: list[Any] = []
    for scope in order:
        kind, wf, event = scopes[scope]
        params += [scope, kind, wf.id, event.workspace_id, empty, 0]
    rows = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(order))
    columns = ", ".join(f'"{field.column}"' for field in GateState._meta.concrete_fields)
    sql = (
        f'INSERT INTO "{table}" (scope, kind, workflow_id, workspace_id, stamps, size) '
        f"VALUES {rows} ON CONFLICT (scope) DO UPDATE SET kind = EXCLUDED.kind "
        f'RETURNING {columns}, (SELECT r.status FROM "{runs}" r '
        f'WHERE r.id = "{table}".run_id) AS holder_status'
    )
    states = {state.scope: state for state in GateState.objects.raw(sql, params)}
    for state in states.values():
        state._loaded = {name: _copy(getattr(state, name)) for name in _STATE_FIELDS}
    return states


def _active_holders(states: Any) -> set[Any]:
    """The runs named by singleton rows that are active.

    The upsert's subquery reads the runs as of the statement's start: a run a racing
    sender created while we waited for its row lock is not in that view (its status
    reads as none), so such runs are read again, in a statement of their own.
    """
    holders = [s for s in states if s.kind == GateKind.SINGLETON and s.run_id is not None]
    active = {s.run_id for s in holders if s.holder_status in ACTIVE_VALUES}
    unseen = [s.run_id for s in holders if s.holder_status is None]
    if unseen:
        active |= set(
            WorkflowRun.objects.filter(pk__in=unseen, status__in=ACTIVE_VALUES).values_list(
                "pk", flat=True
            )
        )
    return active


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _save(states: Any) -> None:
    """Write back what changed on the locked rows (one plain ``UPDATE`` per row: this is
    on the path of every ``send`` to a gated workflow)."""
    table = GateState._meta.db_table
    with connection.cursor() as cursor:
        for state in states:
            changed = [
                GateState._meta.get_field(name)
                for name in _STATE_FIELDS
                if getattr(state, name) != state._loaded[name]
            ]
            if not changed:
                continue
            assignments = ", ".join(f'"{field.column}" = %s' for field in changed)
            values = [
                field.get_db_prep_save(getattr(state, field.attname), connection)
                for field in changed
            ]
            cursor.execute(
                f'UPDATE "{table}" SET {assignments} WHERE scope = %s', [*values, state.pk]
            )


def _skip(event_id: Any, wf: registry.Workflow, reason: str, detail: str = "") -> EventSkip:
    return EventSkip(
        event_id=event_id,
        workflow_id=wf.id,
        reason=reason,
        detail=detail[:300],
        created_at=timezone.now(),
    )


def _registered(workflow_id: str) -> registry.Workflow | None:
    try:
        return registry.get(workflow_id)
    except UnknownWorkflowError:
        logger.warning(
            "workflow %r is no longer registered: its pending run is dropped", workflow_id
        )
        return None
