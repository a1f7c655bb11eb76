"""The engine's Celery tasks. Messages carry only ids; results are not stored."""

import logging
import time
import uuid
from contextlib import AbstractContextManager

from celery import shared_task
from django import db

from eventbus import bus
from workflows import conf, dispatcher, doorbell, engine, gates
from workflows.exceptions import EngineInterrupt

logger = logging.getLogger("workflows.tasks")


#: Longest piece of a bad message that is logged.
_LOGGED = 100


def _canonical(run_id: object, what: str = "run") -> str | None:
    """The id in its canonical form, or ``None`` (logged) if it is not a UUID string."""
    if isinstance(run_id, str) and len(run_id) <= 45:
        try:
            return str(uuid.UUID(run_id))
        except ValueError:
            pass
    logger.error("dropping a message with a malformed %s id: %s", what, repr(run_id)[:_LOGGED])
    return None


def _id_list(ids: object, task: str, what: str) -> bool:
    """Whether ``ids`` is a list a message may carry; if not, the message is logged as
    dropped (a longer list would hold a pool process for long)."""
    if isinstance(ids, list) and len(ids) <= doorbell.MAX_RUN_IDS:
        return True
    size = len(ids) if isinstance(ids, list) else type(ids).__name__
    logger.error(
        "dropping an %s message with %s %s ids: expected a list of at most %d",
        task,
        size,
        what,
        doorbell.MAX_RUN_IDS,
    )
    return False


@shared_task(name=doorbell.EXECUTE_RUN, ignore_result=True)
def execute_run(run_id: str) -> str:
    """Execute the run ``run_id`` if it is runnable; a duplicate message is a no-op."""
    run_id = _canonical(run_id)
    if run_id is None:
        return "invalid"
    # Celery's Django fix-up leaves the connection open when CELERY_DB_REUSE_MAX is set;
    # drop it here if an earlier task left it broken (as a Django request would).
    db.close_old_connections()
    began = time.monotonic()
    with _handing_on(1) as handed:
        outcome = engine.execute(run_id, keep_lease_alive=True)
        _execute_handed(handed, began)
    return outcome


@shared_task(name=doorbell.EXECUTE_RUNS, ignore_result=True)
def execute_runs(run_ids: list[str]) -> dict[str, int]:
    """Execute each of ``run_ids`` in turn, as :func:`execute_run` would; count outcomes.

    One message for many runs (see :func:`workflows.doorbell.ring`). Each run is claimed
    only when its turn comes, so a run still waiting in a batch stays queued: if this
    worker dies or takes long, the dispatcher rings it again after
    ``RING_TIMEOUT_SECONDS`` and another worker takes it (here it is then skipped). One
    run that cannot be stored does not stop the others.
    """
    if not _id_list(run_ids, "execute_runs", "run"):
        return {"invalid": 1}
    began = time.monotonic()
    with _handing_on(len(run_ids)) as handed:
        outcomes = _execute_each(run_ids)
        _execute_handed(handed, began, outcomes)
    return outcomes


def _handing_on(executing: int) -> AbstractContextManager[list[str]]:
    """Collect the runs that the ``executing`` runs of this task (and the runs collected)
    hand a concurrency slot to, up to ``RING_BATCH_SIZE`` runs for the task in all, for
    :func:`_execute_handed`; the others are rung as usual."""
    room = max(0, conf.get().RING_BATCH_SIZE - executing)
    return doorbell.answering(room, handed_only=True)


def _execute_handed(
    handed: list[str], began: float, outcomes: dict[str, int] | None = None
) -> None:
    """Execute the runs collected by :func:`_handing_on`, and those their ends hand a
    slot to in turn: a freed slot's next run then starts in this process, without a
    message and a hop through the broker.

    So that no process holds one key's line for long while other messages wait, a task
    executes at most ``RING_BATCH_SIZE`` runs in all (as a message carries at most as
    many), and starts none of them once it has run ``HAND_ON_SECONDS`` (since
    ``began``, a :func:`time.monotonic`): those left are rung, as without a task to
    take them."""
    budget = conf.get().HAND_ON_SECONDS
    done = 0
    while done < len(handed):
        if time.monotonic() - began >= budget:
            doorbell.ring(handed[done:])  # not "handed": sent, even while answering
            return
        done += 1
        _execute_each(handed[done - 1 : done], outcomes, handed=True)


def _execute_each(
    run_ids: list[str], outcomes: dict[str, int] | None = None, *, handed: bool = False
) -> dict[str, int]:
    outcomes = {} if outcomes is None else outcomes
    for run_id in map(_canonical, run_ids):
        if run_id is None:
            outcome = "invalid"
        else:
            db.close_old_connections()
            try:
                outcome = engine.execute(run_id, keep_lease_alive=True, handed=handed)
            except (Exception, EngineInterrupt):
                logger.exception("run %s: execution interrupted; it will be resumed", run_id)
                outcome = "interrupted"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


@shared_task(name=doorbell.EMIT_EVENTS, ignore_result=True)
def emit_events(event_ids: list[str]) -> int:
    """Emit the armed events ``event_ids`` whose ``ts`` has come; return how many.

    The message was timed for their ``ts`` (:class:`workflows.doorbell.EventTimer`).
    Each event is claimed as the dispatcher claims it, so one already emitted (by the
    dispatcher, or a repeated message) is skipped; one not yet due (a message early)
    is timed again. The runs the events start are executed here, up to
    ``RING_BATCH_SIZE`` of them (the rest are rung as usual): their events are due now,
    and a message each would cost them a trip through the broker.
    """
    if not _id_list(event_ids, "emit_events", "event"):
        return 0
    ids = [pk for pk in (_canonical(value, "event") for value in event_ids) if pk is not None]
    db.close_old_connections()
    with doorbell.answering(conf.get().RING_BATCH_SIZE) as here:
        emitted, early = bus.emit_ids(ids)
    doorbell.time_events(early)
    if here:
        began = time.monotonic()
        with _handing_on(len(here)) as handed:
            _execute_each(here)
            _execute_handed(handed, began)
    return emitted


@shared_task(name=doorbell.FIRE_GATES, ignore_result=True)
def fire_gates(scopes: list[str]) -> int:
    """Fire the debounces and batches ``scopes`` whose timer has come; return how many.

    The message was timed for their ``due_at`` (:func:`workflows.doorbell.time_gates`).
    Each row is claimed as the dispatcher claims it, so one fired already is skipped;
    a debounce moved later by another event is timed again for its new ``due_at``.
    """
    if not _id_list(scopes, "fire_gates", "gate"):
        return 0
    valid = [
        scope
        for scope in scopes
        if isinstance(scope, str) and 0 < len(scope) <= gates.SCOPE_MAX_LENGTH
    ]
    if len(valid) != len(scopes):
        logger.error("dropping malformed gate scopes of a fire_gates message")
    db.close_old_connections()
    fired, ahead = gates.fire_scopes(valid)
    doorbell.time_gates(ahead)
    return fired


@shared_task(name="workflows.dispatch", ignore_result=True)
def dispatch() -> dict:
    """One dispatcher pass, for projects that schedule it with Celery beat."""
    return dispatcher.tick()
