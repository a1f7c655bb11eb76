"""The engine's Celery tasks. Messages carry only ids; results are not stored."""

import logging
import uuid

from celery import shared_task
from django import db

from workflows import dispatcher, doorbell, engine
from workflows.exceptions import EngineInterrupt

logger = logging.getLogger("workflows.tasks")


def _valid(run_id: object) -> bool:
    try:
        uuid.UUID(str(run_id))
    except ValueError:
        logger.error("dropping a message with a malformed run id: %r", run_id)
        return False
    return True


@shared_task(name=doorbell.EXECUTE_RUN, ignore_result=True)
def execute_run(run_id: str) -> str:
    """Execute the run ``run_id`` if it is runnable; a duplicate message is a no-op."""
    if not _valid(run_id):
        return "invalid"
    # Celery's Django fix-up leaves the connection open when CELERY_DB_REUSE_MAX is set;
    # drop it here if an earlier task left it broken (as a Django request would).
    db.close_old_connections()
    return engine.execute(run_id, keep_lease_alive=True)


@shared_task(name=doorbell.EXECUTE_RUNS, ignore_result=True)
def execute_runs(run_ids: list[str]) -> dict[str, int]:
    """Execute each of ``run_ids`` in turn, as :func:`execute_run` would; count outcomes.

    One message for many runs (see :func:`workflows.doorbell.ring`). Each run is claimed
    only when its turn comes, so a run still waiting in a batch stays queued: if this
    worker dies or takes long, the dispatcher rings it again after
    ``RING_TIMEOUT_SECONDS`` and another worker takes it (here it is then skipped). One
    run that cannot be stored does not stop the others.
    """
    outcomes: dict[str, int] = {}
    for run_id in run_ids if isinstance(run_ids, list) else []:
        if not _valid(run_id):
            outcome = "invalid"
        else:
            db.close_old_connections()
            try:
                outcome = engine.execute(run_id, keep_lease_alive=True)
            except (Exception, EngineInterrupt):
                logger.exception("run %s: execution interrupted; it will be resumed", run_id)
                outcome = "interrupted"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


@shared_task(name="workflows.dispatch", ignore_result=True)
def dispatch() -> dict:
    """One dispatcher pass, for projects that schedule it with Celery beat."""
    return dispatcher.tick()
