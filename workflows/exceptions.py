"""Errors of the workflow engine.

Users raise :class:`NonRetriableError` and :class:`RetryAfterError` in step functions,
and catch :class:`StepError` in workflows. The rest say that a workflow or a step was
used wrongly, with a message naming what was wrong and what is allowed.
"""

from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured


class WorkflowError(Exception):
    """A workflow error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class NonRetriableError(WorkflowError):
    """The step failed and must not be retried."""


class RetryAfterError(WorkflowError):
    """The step failed; retry it no sooner than ``retry_after``.

    ``retry_after`` is a ``timedelta``, a number of seconds, or an aware ``datetime``.
    """

    def __init__(self, message: str, retry_after: timedelta | float | datetime) -> None:
        if isinstance(retry_after, bool) or not isinstance(
            retry_after, timedelta | int | float | datetime
        ):
            raise TypeError(
                "retry_after must be a timedelta, a number of seconds or an aware datetime, "
                f"got {type(retry_after).__name__}"
            )
        if isinstance(retry_after, datetime) and retry_after.tzinfo is None:
            raise ValueError("retry_after must be an aware datetime (with tzinfo)")
        super().__init__(message)
        self.retry_after = retry_after


class StepError(WorkflowError):
    """A step failed for good (after its retries); the workflow may catch this."""

    def __init__(self, message: str | None = None, *, step_id: str = "", error: Any = None):
        super().__init__(message)
        self.step_id = step_id
        #: The stored error of the step: ``{"type", "message", "traceback"}``.
        self.error = error or {}


class NonDeterminismError(WorkflowError):
    """A stored memo does not fit the code that replays it."""


class StepUsageError(WorkflowError, ValueError):
    """A step was called with invalid arguments or in a place where steps are not allowed."""


class NestedStepError(StepUsageError):
    """A step was called inside another step's function."""


class UnknownWorkflowError(WorkflowError, LookupError):
    """No workflow is registered under this id."""


class WorkflowDefinitionError(ImproperlyConfigured):
    """A workflow is defined wrongly (bad id, trigger or option, or a duplicate id)."""
