"""Durable workflows for Django and Celery.

Public names: :func:`workflow`, :func:`cancel_run` and the errors users raise or catch.
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


__all__ = [
    "cancel_run",
    "NonDeterminismError",
    "NonRetriableError",
    "RetryAfterError",
    "StepError",
    "workflow",
]
