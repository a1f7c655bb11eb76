"""The engine's Celery tasks. Messages carry only ids; results are not stored."""

import logging
import uuid

from celery import shared_task

from workflows import engine

logger = logging.getLogger("workflows.tasks")


@shared_task(name="workflows.execute_run", ignore_result=True)
def execute_run(run_id: str) -> str:
    """Execute the run ``run_id`` if it is runnable; a duplicate message is a no-op."""
    try:
        uuid.UUID(str(run_id))
    except ValueError:
        logger.error("dropping a message with a malformed run id: %r", run_id)
        return "invalid"
    return engine.execute(run_id, keep_lease_alive=True)


@shared_task(name="workflows.dispatch", ignore_result=True)
def dispatch() -> dict:
    """One dispatcher pass, for projects that schedule it with Celery beat."""
    from workflows import dispatcher

    return dispatcher.tick()
