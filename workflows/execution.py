"""The execution protocol: the one interface every step kind uses.

An :class:`Execution` is one worker's execution of one run. Step kinds
(:mod:`workflows.steps`, :mod:`workflows.coordination`) persist nothing themselves:
they :meth:`~Execution.begin` a step (key, position and the memo already stored),
build a memo with :meth:`~Execution.new_memo`, :meth:`~Execution.save` it (fenced by
the lease, optionally suspending the run in the same transaction), and
:meth:`~Execution.suspend` the run to release the worker. Database errors on the way
become :class:`~workflows.exceptions.EngineInterrupt` (:meth:`~Execution.guard`,
:meth:`~Execution.atomic`), so a lost database never fails a run.
"""

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, transaction
from django.utils import timezone

from eventbus import validation
from workflows import conf, doorbell, memo, registry, runstore
from workflows.exceptions import (
    EngineInterrupt,
    NestedStepError,
    NonDeterminismError,
    StepError,
)
from workflows.models import StepKind, StepResult, WorkflowRun


class RunLogger(logging.LoggerAdapter):
    """Prefixes every message with the workflow and run it comes from."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        """Prefix ``msg`` with ``[workflow_id run_id]``."""
        extra = self.extra or {}
        return f"[{extra.get('workflow_id')} {extra.get('run_id')}] {msg}", kwargs


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


def to_json(value: Any, where: str) -> Any:
    """``value`` as it will read back from the database; ``ValueError`` if it is not JSON."""
    encoded = validation.encode_json(
        value, max_depth=200, max_bytes=conf.get().MAX_OUTPUT_BYTES, where=where
    )
    # Hand back exactly what a replay will read, not the caller's object.
    return json.loads(encoded)


class Execution:
    """One execution of a run by one worker, and the protocol its steps use."""

    def __init__(self, run: WorkflowRun, workflow: registry.Workflow, token: str) -> None:
        self.run = run
        self.workflow = workflow
        #: The lease token: every write of this execution is fenced by it.
        self.token = token
        #: For a branch run of ``step.parallel``: (memo key of the parallel step, index).
        self.branch: tuple[str, int] | None = None
        if run.is_branch:
            self.branch = (run.branch_key or "", run.branch_index or 0)
            # The parent's memos replay the way to the parallel step; the branch's own
            # memo (its one step) is stored on the branch run.
            owners = [run.parent_id, run.pk]
        else:
            owners = [run.pk]
        self._memos: dict[str, StepResult] = {
            m.key: m for m in StepResult.objects.filter(run_id__in=owners).order_by("run_id")
        }
        if run.is_branch:
            self._memos.update({m.key: m for m in StepResult.objects.filter(run=run)})
        self._counter = memo.Counter()
        self._in_step: str | None = None
        #: 0 on the first try of the step being executed, n on its n-th retry.
        self.attempt = 0
        #: An error that must fail the run even if the workflow caught it.
        self.fatal: BaseException | None = None
        self.logger = RunLogger(
            logging.getLogger("workflows.run"),
            {"run_id": str(run.pk), "workflow_id": run.workflow_id},
        )

    # --- beginning a step -----------------------------------------------------------
    def begin(self, call: str, step_id: Any, kind: str) -> tuple[str, int, StepResult | None]:
        """Start a step call: its memo key, its position, and its memo if recorded.

        Raises :class:`NestedStepError` inside another step's function, and (as a fatal
        error the workflow cannot catch away) :class:`NonDeterminismError` when the
        recorded memo does not fit the call.
        """
        if self._in_step is not None:
            raise NestedStepError(
                f"step.{call}({step_id!r}) was called inside the function of step "
                f"{self._in_step!r}: steps cannot be nested; call ctx.step.* only from the "
                "workflow function"
            )
        memo.check_step_id(step_id, call)
        key, position = self._counter.next(step_id)
        stored = self._memos.get(key)
        if (
            self.branch is not None
            and stored is None
            and not (kind == StepKind.PARALLEL and key == self.branch[0])
        ):
            self.fatal = NonDeterminismError(
                f"a branch of step.parallel reached step {step_id!r}, which its parent run "
                "had not recorded: the workflow must reach its parallel step the same way "
                "every time"
            )
            raise self.fatal
        if stored is not None and stored.kind != kind:
            self.fatal = NonDeterminismError(
                f"step {step_id!r} was recorded as a {stored.kind!r} step, but the code now "
                f"calls step.{call} there: the workflow changed under a run that had "
                "already recorded this step. Replay the run from an earlier step, or keep "
                "the old code until such runs finish"
            )
            raise self.fatal
        return key, position, stored

    def recorded(self, key: str) -> StepResult | None:
        """The memo stored under ``key`` in this run, if any."""
        return self._memos.get(key)

    @contextlib.contextmanager
    def running(self, step_id: str, attempt: int) -> Iterator[None]:
        """While a step's function runs: ``ctx.attempt`` is ``attempt``; no step may nest."""
        self.attempt = attempt
        self._in_step = step_id
        try:
            yield
        finally:
            self._in_step = None

    # --- recording ------------------------------------------------------------------
    def new_memo(
        self, step_id: str, key: str, position: int, kind: str, **fields: Any
    ) -> StepResult:
        """A new, unsaved memo of this run."""
        return StepResult(
            run_id=self.run.pk, step_id=step_id, key=key, position=position, kind=kind, **fields
        )

    def save(
        self,
        row: StepResult,
        *,
        then: Callable[[], None] | None = None,
        keep_if_cancelled: bool = False,
        suspend: tuple[str, datetime] | None = None,
    ) -> None:
        """Store ``row`` fenced by the lease, and remember it for the rest of the run.

        ``then`` runs in the same transaction after the memo is saved.
        ``keep_if_cancelled`` keeps the memo of a step body that already ran if the run
        was cancelled meanwhile. ``suspend=(status, until)`` releases the run in the same
        transaction and rings for it at ``until``.
        """
        released = None
        if suspend is not None:
            status, until = suspend
            released = (status, until, self.due(until))
        self.guard(
            runstore.save_step,
            self.run.pk,
            self.token,
            row,
            then=then,
            suspend=released,
            keep_if_cancelled=keep_if_cancelled,
        )
        self.remember(row)
        if suspend is not None:
            doorbell.ring_on_commit([self.run.pk], at=suspend[1])

    def remember(self, row: StepResult) -> None:
        """Use ``row`` as the step's memo for the rest of this execution."""
        self._memos[row.key] = row

    # --- suspending -----------------------------------------------------------------
    def suspend(self, status: str, until: datetime | None) -> None:
        """Release the run into ``status`` (sleeping or waiting) until ``until`` (or an
        arrival, when ``None``); ring for it at ``until``."""
        due = self.due(until) if until is not None else None
        self.guard(runstore.suspend, self.run.pk, self.token, status, until, due)
        if until is not None:
            doorbell.ring_on_commit([self.run.pk], at=until)

    def due(self, at: datetime) -> datetime:
        """When the dispatcher should ring for a wake-up at ``at``.

        Within the eta horizon the broker delivers the bell at ``at``; the dispatcher
        only rings if that message was lost.
        """
        settings = conf.get()
        if at - timezone.now() <= timedelta(seconds=settings.ETA_HORIZON_SECONDS):
            return at + timedelta(seconds=settings.RING_TIMEOUT_SECONDS)
        return at

    # --- guarding -------------------------------------------------------------------
    @staticmethod
    def guard(operation: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``operation``; a database error becomes :class:`EngineInterrupt`."""
        try:
            return operation(*args, **kwargs)
        except DatabaseError as exc:
            raise EngineInterrupt(exc) from exc

    @staticmethod
    def atomic() -> GuardedAtomic:
        """A transaction whose database errors become :class:`EngineInterrupt`."""
        return GuardedAtomic()

    # --- outcomes -------------------------------------------------------------------
    @staticmethod
    def step_error(row: StepResult) -> StepError:
        """The :class:`StepError` a failed memo raises in the workflow."""
        error = row.error or {}
        tries = row.attempt + 1
        return StepError(
            f"step {row.step_id!r} failed after {tries} {'try' if tries == 1 else 'tries'}: "
            f"{error.get('type', 'Error')}: {error.get('message', '')}",
            step_id=row.step_id,
            error=error,
        )


class StepKindBase:
    """Base of the step kinds: each reaches its run only through :class:`Execution`."""

    def __init__(self, execution: Execution) -> None:
        self._ex = execution
