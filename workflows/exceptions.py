"""Every error of the workflow engine, and how errors are stored.

- Users raise :class:`NonRetriableError` and :class:`RetryAfterError` in step functions,
  and catch :class:`StepError` in workflows. The other :class:`WorkflowError` subclasses
  say that a workflow or a step was used wrongly, with a message naming what was wrong
  and what is allowed.
- :class:`ConsoleError` and its subclasses: a bad argument given to the console (admin
  actions, management commands, :mod:`workflows.services`).
- The interrupts (:class:`Suspend`, :class:`BranchDone`, :class:`EngineInterrupt`,
  :class:`LeaseLost`, :class:`RunCancelled`): how the engine leaves a run's execution
  early. Each is a ``BaseException``, so that no ``except Exception`` in workflow code
  can swallow it; the executor (:mod:`workflows.engine`) catches them.
- :func:`describe` and :func:`error_record`: the JSON record of an error that runs and
  steps store, and the admin and commands show.
"""

import traceback
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured

#: Longest traceback kept, in characters (the end is kept: it names the failing line).
MAX_TRACEBACK = 20_000
#: Longest error message kept, in characters.
MAX_MESSAGE = 5000


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


# --- the console ----------------------------------------------------------------------
class ConsoleError(ValueError):
    """The console was given an argument it cannot act on.

    Commands turn it into ``CommandError``; the admin into a message.
    """

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class MalformedIdError(ConsoleError):
    """The id is not a UUID."""


class UnknownRunError(ConsoleError, LookupError):
    """No run has this id."""


class UnknownEventError(ConsoleError, LookupError):
    """No event has this id."""


class UnknownStepError(ConsoleError, LookupError):
    """The run has no step with this id."""


class WrongWorkspaceError(ConsoleError):
    """The run or event belongs to another workspace than the one named."""


class NotReplayableError(ConsoleError):
    """This run or event cannot be replayed (see the message for why)."""


# --- interrupts -----------------------------------------------------------------------
class Suspend(BaseException):
    """The run released its worker and will be resumed later; not an error."""


class BranchDone(BaseException):
    """A branch run of ``step.parallel`` finished its branch: ``value``, or ``failure``.

    The workflow code around ``step.parallel`` cannot catch it: a branch run ends with
    its branch.
    """

    def __init__(self, value: Any, failure: StepError | None = None) -> None:
        super().__init__()
        self.value = value
        self.failure = failure


class EngineInterrupt(BaseException):
    """The engine could not store a step (e.g. the database went away).

    Nothing is marked failed: the lease expires and another worker resumes the run.
    """


class LeaseLost(BaseException):
    """This worker no longer owns the run (its lease expired and another took over)."""


class RunCancelled(BaseException):
    """The run was cancelled while this worker executed it."""


# --- error records --------------------------------------------------------------------
def error_record(type: str, message: str, traceback: str = "", **extra: Any) -> dict[str, Any]:
    """The stored form of an error: ``{"type", "message", "traceback"}`` and ``extra``."""
    return {"type": type, "message": message[:MAX_MESSAGE], "traceback": traceback, **extra}


def describe(exc: BaseException) -> dict[str, Any]:
    """The error record of ``exc``, with its (tail-trimmed) traceback."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(text) > MAX_TRACEBACK:
        text = "…" + text[-MAX_TRACEBACK:]
    return error_record(type(exc).__name__, str(exc), text)
