"""How step code leaves a run's execution early: suspension, branch ends, engine errors.

Each is a ``BaseException``, so that no ``except Exception`` in workflow code can
swallow it; the executor (:mod:`workflows.engine`) catches them.
"""

from typing import Any

from django.db import DatabaseError, transaction

from workflows.exceptions import StepError


class Suspend(BaseException):
    """The run released its worker and will be resumed later; not an error."""


class BranchDone(BaseException):
    """A branch run of ``step.parallel`` finished its branch: ``value``, or ``failure``.

    A ``BaseException``, so the workflow code around ``step.parallel`` cannot catch it:
    a branch run ends with its branch.
    """

    def __init__(self, value: Any, failure: StepError | None = None) -> None:
        super().__init__()
        self.value = value
        self.failure = failure


class GuardedAtomic:
    """``transaction.atomic()`` whose database errors become :class:`EngineInterrupt`."""

    def __enter__(self) -> None:
        self._atomic = transaction.atomic()
        try:
            self._atomic.__enter__()
        except DatabaseError as exc:
            raise EngineInterrupt(exc) from exc

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self._atomic.__exit__(*exc_info)
        except DatabaseError as exc:
            raise EngineInterrupt(exc) from exc


class EngineInterrupt(BaseException):
    """The engine could not store a step (e.g. the database went away).

    Nothing is marked failed: the lease expires and another worker resumes the run.
    """
