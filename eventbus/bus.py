"""Storing and emitting events.

An event with no ``ts``, or a ``ts`` not in the future, is emitted in the same
transaction that stores it: the subscribers (the workflow engine) create their runs
there, so an event sent inside ``transaction.atomic()`` exists and is delivered only if
that transaction commits. A future ``ts`` stores the event as ``scheduled``. Once its
``ts`` is within the timer's horizon (at once when sent that close, else by a dispatcher
pass, :func:`arm_due`) the event is *armed*: the timer (the workflow engine's doorbell)
sends a broker message timed for ``ts`` that emits it (:func:`emit_ids`), so it is
emitted on the broker's clock. The dispatcher still emits whatever is due and not yet
emitted (:func:`emit_due`): a lost, late or repeated message changes nothing, because
every emission claims its row conditionally and two never emit the same event.
"""

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, Protocol

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from eventbus import conf, tracing, validation
from eventbus.exceptions import EventError, UnknownWorkspaceError
from eventbus.models import Event, EventStatus, Workspace, build

#: Called inside the emitting transaction with the list of newly emitted events.
Subscriber = Callable[[list[Event]], None]
_subscribers: list[Subscriber] = []


class Timer(Protocol):
    """Arranges for armed events to be emitted at their ``ts`` (see :func:`set_timer`)."""

    def horizon_ms(self) -> int:
        """How far ahead of its ``ts`` a dispatcher pass arms an event, in milliseconds."""

    def at_send_ms(self) -> int:
        """An event sent this close to its ``ts`` is armed at once, in milliseconds (a
        dispatcher pass might come too late for it)."""

    def arm(self, events: list[tuple[str, int]]) -> None:
        """Inside the arming transaction: have ``(id, ts)`` emitted at ``ts`` once it commits."""


_timer: Timer | None = None

#: Stores one event sent alone together with what its subscribers make of it, in one
#: round trip, and says whether it did (see :func:`set_shortcut`).
Shortcut = Callable[[Event], bool]
_shortcut: Shortcut | None = None
#: The workspace of the workflow run executing in this context, if any.
_run_workspace: ContextVar[Workspace | None] = ContextVar("eventbus_run_workspace", default=None)


def subscribe(handler: Subscriber) -> None:
    """Register ``handler`` to be called, in the emitting transaction, on emission."""
    if handler not in _subscribers:
        _subscribers.append(handler)


def set_timer(timer: Timer | None) -> None:
    """Install the timer that emits armed events (the engine's; ``None``: the dispatcher
    alone emits scheduled events, when its pass finds them due)."""
    global _timer
    _timer = timer


def set_shortcut(shortcut: Shortcut | None) -> None:
    """Install the handler that may store an event sent alone, with everything its
    subscribers would do on its emission, in one round trip (the workflow engine
    installs its own).

    It is called with the unsaved row of an event emitted at once (no future ``ts``,
    no idempotency key) and returns whether it stored it; ``False`` means it wrote
    nothing, and the event is stored and delivered the ordinary way. ``None``: every
    event is stored the ordinary way."""
    global _shortcut
    _shortcut = shortcut


def now_ms() -> int:
    """The current time in Unix milliseconds."""
    return int(time.time() * 1000)


@contextlib.contextmanager
def bound_to(workspace: Workspace) -> Iterator[None]:
    """Inside a run: ``send`` defaults to, and may only use, the run's workspace."""
    reset = _run_workspace.set(workspace)
    try:
        yield
    finally:
        _run_workspace.reset(reset)


def get_workspace(slug: str | None) -> Workspace:
    """Return the workspace ``slug`` (the default one when ``None``).

    Code running inside a workflow run gets the run's workspace and cannot name another.
    """
    bound = _run_workspace.get()
    if bound is not None:
        if slug is None or slug == bound.slug:
            return bound
        raise EventError(
            f"code running in a workflow run of workspace {bound.slug!r} cannot send into "
            f"workspace {slug!r}: events never cross workspaces"
        )
    default = conf.get().DEFAULT_WORKSPACE
    if slug is None or slug == default:
        return _default_workspace(default)
    if not isinstance(slug, str):
        raise EventError(f"workspace must be a slug string, got {type(slug).__name__}")
    problem = validation.invisible_problem(slug)
    if problem:
        raise EventError(f"workspace {slug[:80]!r} {problem}")
    try:
        return Workspace.objects.get(slug=slug)
    except Workspace.DoesNotExist:
        raise UnknownWorkspaceError(
            f"unknown workspace {slug!r}: create it first "
            "(Workspace.objects.create(slug=...)) or pass workspace=None for the default"
        ) from None


#: The default workspace, remembered for a while: it was read on every ``send`` (a round
#: trip of about 0.5 ms). Forgotten when a workspace is saved or deleted in this process
#: and after a migration or flush (tests); elsewhere after ``_DEFAULT_TTL`` seconds.
_default: tuple[float, Workspace] | None = None
_DEFAULT_TTL = 30.0


def _default_workspace(slug: str) -> Workspace:
    remembered = _default
    if remembered is not None and remembered[1].slug == slug and remembered[0] > time.monotonic():
        return remembered[1]
    workspace, _ = Workspace.objects.get_or_create(
        slug=slug, defaults={"name": "Default workspace"}
    )

    def remember() -> None:
        global _default
        _default = (time.monotonic() + _DEFAULT_TTL, workspace)

    # Only a committed row is remembered (at once outside a transaction): one created,
    # or first seen, in a transaction that rolls back may not exist.
    transaction.on_commit(remember)
    return workspace


def forget_workspaces(**_: Any) -> None:
    """Forget the remembered default workspace (a workspace changed, or tables were
    flushed): the next ``send`` reads it again."""
    global _default
    _default = None


def send(
    name: Any,
    data: Any = None,
    *,
    ts: Any = None,
    id: Any = None,
    workspace: str | None = None,
) -> str:
    """See :func:`eventbus.send`."""
    spec = validation.event(name, data, ts, id)
    space = get_workspace(workspace)
    with tracing.send_span([spec.name], space.slug):
        return store([spec], space)[0]


def send_batch(events: Any, *, workspace: str | None = None) -> list[str]:
    """See :func:`eventbus.send_batch`."""
    specs = validation.batch(events)
    space = get_workspace(workspace)
    with tracing.send_span([spec.name for spec in specs], space.slug):
        return store(specs, space)


def store(
    specs: Sequence[validation.EventSpec],
    workspace: Workspace,
    *,
    source_run_id: Any = None,
    source_step_id: Any = None,
    event_ids: Sequence[uuid.UUID] | None = None,
    deliver: bool = True,
) -> list[str]:
    """Store validated events in ``workspace``, emit the due ones; return their ids.

    An event whose idempotency key already exists in the workspace is not stored again:
    its id is returned in its place. ``deliver=False`` stores events as emitted without
    telling subscribers (the trigger event of an invoked run is addressed to one run).
    """
    now = now_ms()
    created_at = timezone.now()
    # What the events start later (other processes, days after) continues this trace.
    trace_context = tracing.carrier()
    arm_before = now + _timer.at_send_ms() if _timer is not None else now
    rows = [
        _row(
            spec,
            workspace,
            event_id=event_ids[index] if event_ids else uuid.uuid4(),
            now=now,
            created_at=created_at,
            arm_before=arm_before,
            trace_context=trace_context,
            source_run_id=source_run_id,
            source_step_id=source_step_id,
        )
        for index, spec in enumerate(specs)
    ]
    if _shortcut is not None and deliver and len(rows) == 1:
        row = rows[0]
        if row.status == EventStatus.EMITTED and not row.idempotency_key and _shortcut(row):
            return [str(row.id)]
    # No savepoint of our own inside a caller's transaction: an error rolls back all.
    with transaction.atomic(savepoint=False):
        ids, fresh = _insert(rows, workspace)
        emitted = [row for row in fresh if row.status == EventStatus.EMITTED]
        if emitted and deliver:
            _deliver(emitted)
        armed = [(str(row.id), row.ts) for row in fresh if row.armed]
        if armed and _timer is not None:
            _timer.arm(armed)
    return ids


def _row(
    spec: validation.EventSpec,
    workspace: Workspace,
    *,
    event_id: uuid.UUID,
    now: int,
    created_at: Any,
    arm_before: int,
    trace_context: dict[str, str] | None,
    source_run_id: Any = None,
    source_step_id: Any = None,
) -> Event:
    ts = spec.ts if spec.ts is not None else now
    return build(
        Event,
        id=event_id,
        workspace=workspace,
        name=spec.name,
        data=spec.data,
        ts=ts,
        idempotency_key=spec.idempotency_key,
        status=EventStatus.SCHEDULED if ts > now else EventStatus.EMITTED,
        armed=now < ts <= arm_before,
        created_at=created_at,
        emitted_at=None if ts > now else created_at,
        source_run_id=source_run_id,
        source_step_id=source_step_id,
        trace_context=trace_context,
    )


def immediate_row(spec: validation.EventSpec, workspace: Workspace) -> Event:
    """The unsaved row :func:`store` would write for ``spec`` (no ``ts``, no idempotency
    key) sent now: emitted at once, in the current trace.

    For a caller that inserts it with a statement of its own, which no subscriber hears
    of: only when :func:`subscribers` are all its own and none of them has work for it.
    """
    if spec.ts is not None or spec.idempotency_key:
        raise ValueError("an immediate row has no ts and no idempotency key")
    now = now_ms()
    return _row(
        spec,
        workspace,
        event_id=uuid.uuid4(),
        now=now,
        created_at=timezone.now(),
        arm_before=now,
        trace_context=tracing.carrier(),
    )


def subscribers() -> tuple[Subscriber, ...]:
    """The handlers :func:`subscribe` registered, in the order they are called."""
    return tuple(_subscribers)


def _insert(rows: list[Event], workspace: Workspace) -> tuple[list[str], list[Event]]:
    """Insert ``rows``, skipping idempotency keys already used; return ids and new rows."""
    keys = {row.idempotency_key for row in rows if row.idempotency_key}
    known: dict[str, str] = {}
    if keys:
        known = {
            key: str(pk)
            for key, pk in Event.objects.filter(
                workspace=workspace, idempotency_key__in=keys
            ).values_list("idempotency_key", "id")
        }
    ids: list[str] = []
    fresh: list[Event] = []
    for row in rows:
        key = row.idempotency_key
        if key and key in known:
            ids.append(known[key])  # stored before, or earlier in this same batch
            continue
        if key:
            known[key] = str(row.id)
        ids.append(str(row.id))
        fresh.append(row)
    if not fresh:
        return ids, fresh
    if not keys:
        Event.objects.bulk_create(fresh, batch_size=1000)
        return ids, fresh
    try:
        with transaction.atomic():
            Event.objects.bulk_create(fresh, batch_size=1000)
    except IntegrityError:
        # A concurrent send took one of our keys between the lookup and the insert:
        # insert one by one, each in its own savepoint, and map the ones that lost.
        winners: dict[str, str] = {}
        kept: list[Event] = []
        for row in fresh:
            try:
                with transaction.atomic():
                    row.save(force_insert=True)
                kept.append(row)
            except IntegrityError:
                if not row.idempotency_key:
                    raise
                winners[str(row.id)] = str(
                    Event.objects.values_list("id", flat=True).get(
                        workspace=workspace, idempotency_key=row.idempotency_key
                    )
                )
        ids = [winners.get(event_id, event_id) for event_id in ids]
        fresh = kept
    return ids, fresh


def _deliver(events: list[Event]) -> None:
    for handler in _subscribers:
        handler(events)


def emit_due(limit: int = 500) -> int:
    """Emit up to ``limit`` scheduled events whose ``ts`` has come; return how many.

    Each event is claimed with a conditional update (and, where the database has it,
    ``SELECT … FOR UPDATE SKIP LOCKED``), so concurrent dispatchers share the work and
    none is emitted twice.
    """
    return _emit(Event.objects.due(now_ms()).order_by("ts"), limit)


def emit_ids(event_ids: Sequence[str]) -> tuple[int, list[tuple[str, int]]]:
    """Emit those of ``event_ids`` that are scheduled and due (an armed event's timed
    message); return how many, and the ``(id, ts)`` of those not yet due.

    An event already emitted (by the dispatcher, or a repeated message) or locked by
    another emitter is skipped. One not yet due (a message delivered early) is returned
    for the caller to time again.
    """
    now = now_ms()
    early = list(
        Event.objects.filter(pk__in=event_ids, status=EventStatus.SCHEDULED, ts__gt=now)
        .values_list("id", "ts")
        .order_by("ts")
    )
    due = Event.objects.due(now).filter(pk__in=event_ids)
    return _emit(due), [(str(pk), ts) for pk, ts in early]


def _emit(due: Any, limit: int | None = None) -> int:
    """Emit the scheduled events of the queryset ``due`` (up to ``limit``), each once."""
    with transaction.atomic():
        due = due.select_related("workspace")
        if connection.features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True, of=("self",))
        batch = list(due[:limit] if limit is not None else due)
        if not batch:
            return 0
        emitted_at = timezone.now()
        claimed = Event.objects.filter(
            pk__in=[event.pk for event in batch], status=EventStatus.SCHEDULED
        ).update(status=EventStatus.EMITTED, emitted_at=emitted_at)
        if claimed != len(batch):
            # Only possible without row locks: someone else emitted part of the batch.
            # Roll back and let the next tick take whatever is still scheduled.
            transaction.set_rollback(True)
            return 0
        for event in batch:
            event.status = EventStatus.EMITTED
            event.emitted_at = emitted_at
        _deliver(batch)
    return len(batch)


def arm_due(limit: int = 500) -> int:
    """Arm up to ``limit`` scheduled events whose ``ts`` came within the timer's horizon
    (each once, however many dispatchers run); return how many."""
    if _timer is None:
        return 0
    horizon = now_ms() + _timer.horizon_ms()
    with transaction.atomic():
        near = Event.objects.filter(
            status=EventStatus.SCHEDULED, armed=False, ts__lte=horizon
        ).order_by("ts")
        if connection.features.has_select_for_update_skip_locked:
            near = near.select_for_update(skip_locked=True)
        events = [(str(pk), ts) for pk, ts in near.values_list("id", "ts")[:limit]]
        if not events:
            return 0
        Event.objects.filter(pk__in=[pk for pk, _ in events], armed=False).update(armed=True)
        _timer.arm(events)
    return len(events)
