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

import math
import re
import traceback
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured

#: Longest traceback kept, in characters (the end is kept: it names the failing line).
MAX_TRACEBACK = 20_000
#: Longest error message kept, in characters.
MAX_MESSAGE = 5000
#: Longest ``retry_after`` (about 100 years, as for every other duration).
MAX_RETRY_AFTER = timedelta(days=100 * 365)
#: What no database text column can hold: NUL, and surrogates not part of a pair (a
#: Python ``str`` holds them, UTF-8 cannot encode them).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class WorkflowError(Exception):
    """A workflow error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class NonRetriableError(WorkflowError):
    """The step failed and must not be retried."""


class RetryAfterError(WorkflowError):
    """The step failed; retry it no sooner than ``retry_after``.

    ``retry_after`` is a ``timedelta`` or a number of seconds (from 0 to 100 years), or
    an aware ``datetime`` at most 100 years ahead.
    """

    def __init__(self, message: str, retry_after: timedelta | float | datetime) -> None:
        if isinstance(retry_after, bool) or not isinstance(
            retry_after, timedelta | int | float | datetime
        ):
            raise TypeError(
                "retry_after must be a timedelta, a number of seconds or an aware datetime, "
                f"got {type(retry_after).__name__}"
            )
        if isinstance(retry_after, datetime):
            if retry_after.tzinfo is None:
                raise ValueError("retry_after must be an aware datetime (with tzinfo)")
            try:
                ahead = retry_after.astimezone(UTC) - datetime.now(UTC)
            except OverflowError:
                ahead = MAX_RETRY_AFTER * 2
            if ahead > MAX_RETRY_AFTER:
                raise ValueError(
                    f"retry_after {retry_after.isoformat()} is more than 100 years ahead"
                )
        else:
            if isinstance(retry_after, timedelta):
                seconds = retry_after.total_seconds()
            else:
                seconds = float(retry_after)
            if not math.isfinite(seconds) or not 0 <= seconds <= MAX_RETRY_AFTER.total_seconds():
                raise ValueError(
                    f"retry_after must be from 0 seconds to 100 years, got {retry_after!r}"
                )
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
    """A stored memo does not fit the code that replays it.

    ``step_id`` is the step where the code and the record part, ``recorded`` what the
    run recorded there and ``called`` what the code asked for (both short texts, empty
    when unknown); a paused run keeps all three in its error.
    """

    def __init__(
        self, message: str | None = None, *, step_id: str = "", recorded: str = "", called: str = ""
    ) -> None:
        super().__init__(message)
        self.step_id = step_id
        self.recorded = recorded
        self.called = called


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


class ScheduleError(ConsoleError):
    """A schedule was given an argument it cannot take (see the message for why)."""


class DuplicateScheduleError(ScheduleError):
    """A schedule with this id exists already."""


class UnknownScheduleError(ScheduleError, LookupError):
    """No schedule has this id."""


class NotResumableError(ConsoleError):
    """This run cannot be resumed (see the message for why)."""


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
def storable(text: str) -> str:
    """``text`` with what no database can store escaped (NUL, lone surrogates).

    Such text comes from user code (an exception message, a traceback) and is kept, not
    refused; a note at the end says that characters were escaped.
    """
    if not _UNSTORABLE.search(text):
        return text
    escaped = _UNSTORABLE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)
    return f"{escaped} [unstorable characters escaped]"


def error_record(type: str, message: str, traceback: str = "", **extra: Any) -> dict[str, Any]:
    """The stored form of an error: ``{"type", "message", "traceback"}`` and ``extra``.

    Every text is made storable (:func:`storable`) and the message is cut to
    ``MAX_MESSAGE`` characters.
    """
    return {
        "type": storable(type),
        "message": storable(message[:MAX_MESSAGE]),
        "traceback": storable(traceback),
        **{
            key: storable(value) if isinstance(value, str) else value
            for key, value in extra.items()
        },
    }


def describe(exc: BaseException) -> dict[str, Any]:
    """The error record of ``exc``, with its (tail-trimmed) traceback.

    An exception whose ``str()`` or traceback cannot be formatted is described by its
    type instead: describing a failure must never fail.
    """
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__name__} whose str() raised>"
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        text = ""
    if len(text) > MAX_TRACEBACK:
        text = "…" + text[-MAX_TRACEBACK:]
    return error_record(type(exc).__name__, message, text)


#: The engine's own interrupts: never recorded as failures of user code.
INTERRUPTS = (Suspend, BranchDone, EngineInterrupt, LeaseLost, RunCancelled)
