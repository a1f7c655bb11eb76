"""Ringing the bell: telling a worker that a run can move on.

A message carries only run ids; the database says what to do. A lost message is rung
again by the dispatcher, a duplicate is a no-op (the claim is conditional), so ringing
never needs to be reliable, only cheap.

Many runs rung at once (a fan-out, a dispatcher pass) share messages: up to
``RING_BATCH_SIZE`` run ids each, but never fewer than four messages when there are at
least four runs, so that several workers share the work.

A wake-up within ``ETA_HORIZON_SECONDS`` is sent with a Celery ``eta``, so the broker's
clock rings it on time; a later one is left to the database, and a dispatcher pass
rings it once it comes within the horizon (:func:`ring_due`). Scheduled events are
timed the same way (:class:`EventTimer`): a worker then holds only the messages of the
next ``ETA_HORIZON_SECONDS``, however much work is pending.

A worker task that starts runs itself can take their bells instead (:func:`answering`):
the task that emits armed events executes the runs they start, and a task that executes
runs executes those their ends hand a concurrency slot to, up to ``RING_BATCH_SIZE``
runs per task, without a message and a hop through the broker for each.

Messages name the tasks of :mod:`workflows.tasks` rather than importing them, so the
layers below the engine never depend on the engine above them.
"""

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import current_app
from django.db import transaction
from django.utils import timezone

from workflows import conf

logger = logging.getLogger("workflows.doorbell")

#: When set (by :mod:`workflows.testing`), bells go to this callable instead of Celery.
_override = None
#: Names of the tasks a bell asks for (defined in :mod:`workflows.tasks`).
EXECUTE_RUN = "workflows.execute_run"
EXECUTE_RUNS = "workflows.execute_runs"
EMIT_EVENTS = "workflows.emit_events"
FIRE_GATES = "workflows.fire_gates"
#: Most run ids one message may carry: ``RING_BATCH_SIZE`` may not exceed it, and a
#: worker drops a longer list as forged (it would hold a pool process for long).
MAX_RUN_IDS = 1000
#: A ring of many runs is split into at least this many messages (when it has as many).
_SPREAD = 4
#: Inside :func:`answering`: the runs taken here, how many more may be, and whether
#: only runs handed a slot are taken.
_answering: ContextVar[tuple[list[str], int, bool] | None] = ContextVar(
    "workflows_answering", default=None
)


@contextlib.contextmanager
def answering(limit: int, *, handed_only: bool = False) -> Iterator[list[str]]:
    """Inside the block, the first ``limit`` runs rung for now are not sent a message but
    collected in the yielded list: the caller (a worker task) executes them itself.

    With ``handed_only``, only runs handed a concurrency slot are collected (see
    :func:`workflows.slots.hand_over`); every other bell is sent, so that what must
    spread over workers (the branches of ``step.parallel``, a fan-out) still does.
    Ringing is still only a hint: a collected run stays queued until it is claimed, and
    if the caller dies first the dispatcher rings it after ``RING_TIMEOUT_SECONDS``.
    """
    taken: list[str] = []
    reset = _answering.set((taken, limit, handed_only))
    try:
        yield taken
    finally:
        _answering.reset(reset)


def _take_here(ids: list[str], handed: bool) -> list[str]:
    """Collect what :func:`answering` takes of ``ids``; return the rest, to be sent."""
    here = _answering.get()
    if here is None:
        return ids
    taken, limit, handed_only = here
    if handed_only and not handed:
        return ids
    room = max(0, limit - len(taken))
    taken.extend(ids[:room])
    return ids[room:]


def ring(run_ids: Iterable[Any], *, at: datetime | None = None, handed: bool = False) -> None:
    """Ask a worker to execute each run, now or at ``at`` (within the eta horizon).

    ``handed``: the runs were handed a concurrency slot just freed (a task executing
    runs may take them, see :func:`answering`).
    """
    ids = [str(run_id) for run_id in run_ids]
    if not ids:
        return
    if _override is not None:
        _override(ids, at)
        return
    options = _options()
    settings = conf.get()
    if at is not None and at > timezone.now():
        if at - timezone.now() > timedelta(seconds=settings.ETA_HORIZON_SECONDS):
            return  # too far ahead for the broker: the dispatcher rings when it is due
        options["eta"] = at
    else:
        ids = _take_here(ids, handed)
        if not ids:
            return
    try:
        for chunk in chunks(ids, settings.RING_BATCH_SIZE):
            if len(chunk) == 1:
                current_app.send_task(EXECUTE_RUN, (chunk[0],), **options)
            else:
                current_app.send_task(EXECUTE_RUNS, (chunk,), **options)
    except Exception:
        # The rows are committed; the dispatcher rings again after RING_TIMEOUT_SECONDS.
        logger.warning(
            "could not ring for %d run(s); the dispatcher will retry",
            len(ids),
            exc_info=True,
        )


def ring_due(due: Iterable[tuple[Any, datetime]]) -> None:
    """Ring each ``(run id, due_at)`` at its ``due_at`` (at once if it has passed)."""
    now = timezone.now()
    by_time: dict[datetime | None, list[Any]] = {}
    for run_id, at in due:
        by_time.setdefault(at if at > now else None, []).append(run_id)
    for at, ids in by_time.items():
        ring(ids, at=at)


def ring_due_on_commit(due: Iterable[tuple[Any, datetime]]) -> None:
    """:func:`ring_due` once the current transaction commits."""
    due = list(due)
    if due:
        transaction.on_commit(lambda: ring_due(due), robust=True)


#: Armed events whose ``ts`` falls in the same span of this many milliseconds share one
#: pending message (see :class:`EventTimer`).
BUCKET_MS = 1000


class EventTimer:
    """The event bus's timer (:class:`eventbus.bus.Timer`): an event armed within
    ``ETA_HORIZON_SECONDS`` of its ``ts`` is emitted by a message with that ``eta``.

    Armed events share messages: one per second of ``ts`` (``BUCKET_MS``) per arming,
    timed for the earliest of them. The task emits what is due and times one message
    for the rest of its events, at the next ``ts`` among them. So a worker holds a few
    messages per second of the horizon, not one per pending event, and events due
    close together are emitted together.
    """

    def horizon_ms(self) -> int:
        """``ETA_HORIZON_SECONDS``, in milliseconds."""
        return int(conf.get().ETA_HORIZON_SECONDS * 1000)

    def at_send_ms(self) -> int:
        """Four dispatcher intervals, at least a second (within the horizon)."""
        settings = conf.get()
        return min(self.horizon_ms(), max(1000, int(4000 * settings.DISPATCH_INTERVAL_SECONDS)))

    def arm(self, events: list[tuple[str, int]]) -> None:
        """Send the timed messages for ``events`` once the arming transaction commits."""
        if events:
            transaction.on_commit(lambda: time_events(events), robust=True)


def time_events(events: Iterable[tuple[str, int]]) -> None:
    """Send messages that emit the ``(event id, ts)`` at their ``ts``: one per
    ``BUCKET_MS`` of ``ts`` (at most ``MAX_RUN_IDS`` ids each), timed for its earliest."""
    timed = [(datetime.fromtimestamp(ts / 1000, tz=UTC), event_id) for event_id, ts in events]
    _send_timed(EMIT_EVENTS, timed, "event(s)")


def _send_timed(task: str, items: list[tuple[datetime, str]], what: str) -> None:
    """Send ``task`` messages for the ``(due time, id)`` items: one per ``BUCKET_MS`` of
    due time (at most ``MAX_RUN_IDS`` ids each), timed for the earliest. If the broker
    fails, the rows stay due and the dispatcher takes them when they are."""
    if _override is not None:
        return  # tests without a broker: their dispatcher pass takes what is due
    buckets: dict[int, list[tuple[datetime, str]]] = {}
    for at, item in items:
        buckets.setdefault(int(at.timestamp() * 1000) // BUCKET_MS, []).append((at, str(item)))
    options = _options()
    try:
        for _, bucket in sorted(buckets.items()):
            bucket.sort()
            for lo in range(0, len(bucket), MAX_RUN_IDS):
                part = bucket[lo : lo + MAX_RUN_IDS]
                ids = [item for _, item in part]
                current_app.send_task(task, (ids,), eta=part[0][0], **options)
    except Exception:
        logger.warning(
            "could not time %d %s; the dispatcher will take them once they are due",
            len(items),
            what,
            exc_info=True,
        )


def _options() -> dict[str, Any]:
    # The tasks store no result; saying so here keeps a result backend from preparing
    # for one (Redis would subscribe to a result channel per message).
    options: dict[str, Any] = {"ignore_result": True}
    queue = conf.get().QUEUE
    if queue:
        options["queue"] = queue
    return options


def chunks(ids: list[str], batch_size: int) -> list[list[str]]:
    """Split ``ids`` into messages of at most ``batch_size``, at least ``_SPREAD`` of them."""
    size = max(1, min(batch_size, math.ceil(len(ids) / _SPREAD)))
    return [ids[lo : lo + size] for lo in range(0, len(ids), size)]


def ring_on_commit(
    run_ids: Iterable[Any], *, at: datetime | None = None, handed: bool = False
) -> None:
    """Ring once the current transaction commits (never if it rolls back)."""
    ids = [str(run_id) for run_id in run_ids]
    if ids:
        transaction.on_commit(lambda: ring(ids, at=at, handed=handed), robust=True)


def time_gates(timers: Iterable[tuple[str, datetime | None]]) -> None:
    """Once the current transaction commits, send messages that fire the debounces and
    batches ``(scope, due_at)`` at their ``due_at``: those within ``ETA_HORIZON_SECONDS``
    (the dispatcher fires the others), one message per ``BUCKET_MS`` of ``due_at``
    timed for its earliest, as for events."""
    timers = [(scope, at) for scope, at in timers if at is not None]
    if timers:
        transaction.on_commit(lambda: _send_gate_timers(timers), robust=True)


def _send_gate_timers(timers: list[tuple[str, datetime]]) -> None:
    horizon = timezone.now() + timedelta(seconds=conf.get().ETA_HORIZON_SECONDS)
    near = [(at, scope) for scope, at in timers if at <= horizon]
    _send_timed(FIRE_GATES, near, "debounce/batch timer(s)")
