"""Durable workflows for Django and Celery.

Public names: :func:`workflow`, :func:`cancel_run`, :func:`resume_run`,
:func:`pause_workflow`, :func:`resume_workflow` and the errors users raise or catch.
"""

from typing import Any

from workflows.exceptions import (
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
)
from workflows.registry import workflow


def cancel_run(run_id: Any, *, workspace: str | None = None) -> bool:
    """Cancel an active run; ``False`` if it had already ended.

    The step executing at that moment finishes and its result is kept; nothing after it
    runs. Its sleeps, waits and not-yet-emitted deferred events never fire, its active
    children are cancelled, and a parent waiting for it gets ``StepError``. With
    ``workspace``, the run must belong to it.
    """
    from workflows import services  # not at import time: it imports models (app registry)

    return services.cancel_run(run_id, workspace=workspace)


def resume_run(run_id: Any, *, workspace: str | None = None) -> Any:
    """Resume a paused run on the code deployed now; return the run (queued again).

    A run that still does not fit the code is paused again; a run that is not paused
    raises ``ValueError`` (a ``NotResumableError``). With ``workspace``, the run must
    belong to it.
    """
    from workflows import services  # not at import time: it imports models (app registry)

    return services.resume_run(run_id, workspace=workspace)


def pause_workflow(workflow_id: str, *, workspace: str | None = None) -> bool:
    """Pause a workflow in ``workspace`` (``None``: every workspace); ``False`` if it was.

    While paused, events start no run of it (the skip is recorded on the event) and none
    of its active runs is started or resumed; a run executing now finishes that execution.
    """
    from workflows import pausing  # not at import time: it imports models (app registry)

    return pausing.pause_workflow(workflow_id, workspace=workspace)


def resume_workflow(workflow_id: str, *, workspace: str | None = None) -> int:
    """Resume a paused workflow (``None``: wherever it is paused); its held runs move on.

    Returns how many of its runs were waiting to move and are rung now.
    """
    from workflows import pausing  # not at import time: it imports models (app registry)

    return pausing.resume_workflow(workflow_id, workspace=workspace)


__all__ = [
    "cancel_run",
    "pause_workflow",
    "resume_workflow",
    "resume_run",
    "NonDeterminismError",
    "NonRetriableError",
    "RetryAfterError",
    "StepError",
    "workflow",
]
