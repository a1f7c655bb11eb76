"""The dispatcher: hands over whatever the database says is due.

Each pass (:func:`tick`):

1. arms scheduled events whose ``ts`` comes within ``ETA_HORIZON_SECONDS`` (a message
   timed for their ``ts`` emits them, :class:`workflows.doorbell.EventTimer`), and emits
   those whose ``ts`` has come and that no message emitted yet (each exactly once);
2. fires the schedules whose next slot has come (:mod:`workflows.firing`; the ``cron=``
   of the registered workflows are reconciled with the database on the first pass),
   and the debounces and batches whose timer has come (:mod:`workflows.gates`);
3. rings for active runs whose ``due_at`` comes within ``ETA_HORIZON_SECONDS``, with
   an ``eta`` of their ``due_at``: sleeps that end, retries whose backoff ends, queued
   runs whose message was lost, running runs whose worker died (lease expired). Their
   ``due_at`` moves ``RING_TIMEOUT_SECONDS`` ahead, so a run is rung again only if that
   bell goes unanswered too.

Rows are taken with ``SELECT … FOR UPDATE SKIP LOCKED`` where the database has it, so any
number of dispatchers can run at once. By default every Celery worker runs one in a
thread (``WORKFLOWS["DISPATCHER_IN_WORKER"]``); ``manage.py run_dispatcher`` runs one on
its own, and the ``workflows.dispatch`` task suits Celery beat.
"""

import contextlib
import logging
import threading
from collections.abc import Callable

from django.db import close_old_connections, connection, transaction

from eventbus import bus
from workflows import conf, doorbell, firing, gates, lifecycle, runstore

logger = logging.getLogger("workflows.dispatcher")


def tick() -> dict[str, int]:
    """One pass; returns how many events were emitted, schedules fired and runs rung."""
    batch = conf.get().DISPATCH_BATCH
    _drain(bus.arm_due, batch)
    emitted = _drain(bus.emit_due, batch)
    firing.ensure_reconciled()
    fired = _drain(firing.fire_due, batch)
    # Debounces and batches whose timer has come (workflows.gates): their runs start.
    fired += _drain(gates.fire_due, batch)
    rung = _drain(ring_due_runs, batch)
    timed_out = lifecycle.expire_timeouts(batch)
    return {"emitted": emitted, "fired": fired, "rung": rung, "timed_out": timed_out}


def _drain(step: Callable[[int], int], batch: int) -> int:
    """Call ``step(batch)`` until it handles fewer than ``batch`` rows; return the total."""
    total = 0
    while True:
        count = step(batch)
        total += count
        if count < batch:
            return total


def ring_due_runs(limit: int) -> int:
    """Ring for up to ``limit`` active runs whose ``due_at`` comes within the eta
    horizon, each at its ``due_at``."""
    with transaction.atomic():
        due = runstore.take_due(limit, ahead=conf.get().ETA_HORIZON_SECONDS)
        doorbell.ring_due_on_commit(due)
    return len(due)


class DispatcherThread(threading.Thread):
    """Runs :func:`tick` every ``DISPATCH_INTERVAL_SECONDS`` until stopped."""

    def __init__(self) -> None:
        super().__init__(name="workflows-dispatcher", daemon=True)
        self._stop_event = threading.Event()

    def run(self) -> None:
        logger.info("dispatcher started")
        while not self._stop_event.is_set():
            try:
                result = tick()
                if result["emitted"] or result["fired"] or result["rung"]:
                    logger.debug("dispatched %s", result)
            except Exception:
                logger.exception("dispatcher pass failed; retrying")
                connection.close()
            try:
                close_old_connections()
            except Exception:
                # A broken connection must not end the thread: deferred events, due
                # schedules and stalled runs would wait for another dispatcher.
                logger.exception("could not check the database connection; reopening it")
                with contextlib.suppress(Exception):
                    connection.close()
            self._stop_event.wait(conf.get().DISPATCH_INTERVAL_SECONDS)
        connection.close()
        logger.info("dispatcher stopped")

    def stop(self) -> None:
        """Ask the loop to end after the current pass."""
        self._stop_event.set()
