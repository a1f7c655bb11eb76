"""Ringing the bell: telling a worker that a run can move on.

A message carries only run ids; the database says what to do. A lost message is rung
again by the dispatcher, a duplicate is a no-op (the claim is conditional), so ringing
never needs to be reliable, only cheap.

Many runs rung at once (a fan-out, a dispatcher pass) share messages: up to
``RING_BATCH_SIZE`` run ids each, but never fewer than four messages when there are at
least four runs, so that several workers share the work.

Messages name the tasks of :mod:`workflows.tasks` rather than importing them, so the
layers below the engine never depend on the engine above them.
"""

import logging
import math
from collections.abc import Iterable
from datetime import datetime, timedelta
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
#: Most run ids one message may carry: ``RING_BATCH_SIZE`` may not exceed it, and a
#: worker drops a longer list as forged (it would hold a pool process for long).
MAX_RUN_IDS = 1000
#: A ring of many runs is split into at least this many messages (when it has as many).
_SPREAD = 4


def ring(run_ids: Iterable[Any], *, at: datetime | None = None) -> None:
    """Ask a worker to execute each run, now or at ``at`` (within the eta horizon)."""
    ids = [str(run_id) for run_id in run_ids]
    if not ids:
        return
    if _override is not None:
        _override(ids, at)
        return
    # The tasks store no result; saying so here keeps a result backend from preparing
    # for one (Redis would subscribe to a result channel per message).
    options: dict[str, Any] = {"ignore_result": True}
    settings = conf.get()
    if settings.QUEUE:
        options["queue"] = settings.QUEUE
    if at is not None and at > timezone.now():
        if at - timezone.now() > timedelta(seconds=settings.ETA_HORIZON_SECONDS):
            return  # too far ahead for the broker: the dispatcher rings when it is due
        options["eta"] = at
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


def chunks(ids: list[str], batch_size: int) -> list[list[str]]:
    """Split ``ids`` into messages of at most ``batch_size``, at least ``_SPREAD`` of them."""
    size = max(1, min(batch_size, math.ceil(len(ids) / _SPREAD)))
    return [ids[lo : lo + size] for lo in range(0, len(ids), size)]


def ring_on_commit(run_ids: Iterable[Any], *, at: datetime | None = None) -> None:
    """Ring once the current transaction commits (never if it rolls back)."""
    ids = [str(run_id) for run_id in run_ids]
    if ids:
        transaction.on_commit(lambda: ring(ids, at=at), robust=True)
