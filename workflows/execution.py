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
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models import Case, F, JSONField, Value, When
from django.utils import timezone

from eventbus import validation
from eventbus.models import build
from workflows import conf, doorbell, lifecycle, memo, registry, runstore, telemetry
from workflows.exceptions import (
    EngineInterrupt,
    NestedStepError,
    NonDeterminismError,
    StepError,
    StepUsageError,
)
from workflows.models import RunStatus, StepKind, StepResult, StepStatus, WorkflowRun


class RunLogger(logging.LoggerAdapter):
    """Prefixes every message with the workflow and run it comes from, and gives every
    record ``run_id``, ``workflow_id`` and (once the workflow reached a step) ``step_id``
    as ``extra`` fields, for a JSON log formatter."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        """Prefix ``msg`` with ``[workflow_id run_id]``; add the run's fields to ``extra``."""
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **(kwargs.get("extra") or {})}
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


#: Outputs larger than this are not loaded with a run's memos: each is read when its step
#: is replayed, and not kept after, so a resumption holds one large output at a time.
LAZY_OUTPUT_BYTES = 64 * 1024


def to_json(value: Any, where: str) -> Any:
    """``value`` as it will read back from the database; ``ValueError`` if it is not JSON."""
    return sized_json(value, where)[0]


def sized_json(value: Any, where: str) -> tuple[Any, int]:
    """:func:`to_json` and the size of the encoded value, in bytes."""
    encoded = validation.encode_json(
        value, max_depth=200, max_bytes=conf.get().MAX_OUTPUT_BYTES, where=where
    )
    # Hand back exactly what a replay will read, not the caller's object.
    return json.loads(encoded), len(encoded.encode("utf-8"))


class Execution:
    """One execution of a run by one worker, and the protocol its steps use."""

    def __init__(
        self,
        run: WorkflowRun,
        workflow: registry.Workflow,
        token: str,
        memos: Iterable[StepResult] | None = None,
    ) -> None:
        """``memos``: the run's memos (and its parent's, for a branch) if already read."""
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
        if memos is None and _no_memos_yet(run):
            memos = []
        if memos is None:
            memos = _memos(StepResult.objects.filter(run_id__in=owners))
        # A branch's own memo wins over a parent's memo under the same key.
        ordered = sorted(memos, key=lambda m: m.run_id == run.pk)
        self._memos: dict[str, StepResult] = {m.key: m for m in ordered}
        #: Encoded bytes of the run's step outputs so far (``MAX_RUN_OUTPUT_BYTES``).
        self.output_bytes = sum(m.output_bytes for m in ordered if m.run_id == run.pk)
        #: The run whose memos are the history the code replays (a branch's parent).
        self._history = run.parent_id if run.is_branch else run.pk
        #: The position of the history's last memo: a step the run did not record, met
        #: before it, was added under a run that had already gone past that point.
        self._last_position = max(
            (m.position for m in ordered if m.run_id == self._history), default=-1
        )
        #: The answer of each patch met in this execution, and where it was asked.
        self._patches: dict[str, tuple[bool, str]] = {}
        self._counter = memo.Counter()
        self._in_step: str | None = None
        #: 0 on the first try of the step being executed, n on its n-th retry.
        self.attempt = 0
        #: An error that must fail the run even if the workflow caught it.
        self.fatal: BaseException | None = None
        #: Executions of this run lost with their worker before this one (a worker killed,
        #: crashed or out of memory): the first step this execution records is where they
        #: were lost, and a step body counts each as one of its tries.
        self.lost = run.lost_executions
        self.logger = RunLogger(logging.getLogger("workflows.run"), telemetry.log_fields(run))
        #: ``time.monotonic()`` when the latest step call began, and how long the latest
        #: try of a step's function took (for spans and ``workflows_step_duration_seconds``).
        self._began = 0.0
        self._try_seconds: float | None = None
        #: A completed step's memo not stored yet, with how long its try took (see
        #: :meth:`save`'s ``hold``), and whether this run may hold one back.
        self._held: tuple[StepResult, float] | None = None
        self._may_hold: bool | None = None

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
        self.store_held()  # the step before is stored before this one begins
        self.logger.extra["step_id"] = step_id  # the step the workflow is in
        self._began = time.monotonic()
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
                "every time",
                step_id=step_id,
                recorded="nothing (the parent run did not record it)",
                called=f"step.{call}",
            )
            raise self.fatal
        if stored is not None and stored.kind != kind:
            self.fatal = NonDeterminismError(
                f"step {step_id!r} was recorded as a {stored.kind!r} step, but the code now "
                f"calls step.{call} there: the workflow changed under a run that had "
                "already recorded this step. Guard the change with ctx.patched(), replay "
                "the run from an earlier step, or keep the old code until such runs finish",
                step_id=step_id,
                recorded=f"a {stored.kind} step",
                called=f"step.{call}",
            )
            raise self.fatal
        if stored is not None:
            self._counter.resume_after(stored.position)
        elif self._past(position) and self.run.replay_of_id is None:
            # Not for replays: a replay from a step copies the completed memos before
            # it and leaves out the others, so its history has gaps the code fills.
            later = self._first_recorded_from(position)
            self.fatal = NonDeterminismError(
                f"the code now calls step.{call}({step_id!r}), which this run did not record, "
                f"before steps it did record (next: {later.step_id!r}): a step was added, "
                "renamed or moved under a run that had already gone past that point. Guard "
                "the change with ctx.patched(), or replay the run from an earlier step",
                step_id=step_id,
                recorded=f"nothing here; next, {later.kind} step {later.step_id!r}",
                called=f"step.{call}",
            )
            raise self.fatal
        return key, position, stored

    def _past(self, position: int) -> bool:
        """Whether the run had recorded a memo at or after ``position`` (that is, before
        this execution met its memos: it went past this point on other code)."""
        return self._last_position >= position

    def _first_recorded_from(self, position: int) -> StepResult:
        own = (m for m in self._memos.values() if m.run_id == self._history)
        return min((m for m in own if m.position >= position), key=lambda m: m.position)

    # --- patches --------------------------------------------------------------------
    def patched(self, patch_id: Any, *, deprecated: bool = False) -> bool:
        """Whether this run takes the new path of patch ``patch_id`` (``ctx.patched``).

        ``True`` if the run holds the patch's marker, or recorded nothing at or after
        this point (the marker is then recorded: from the workflow function of a run,
        not from a step's function or a branch run, which only read). Every later call
        in the execution gets the first answer; the same id asked from another line of
        code is a :class:`StepUsageError`. ``deprecated`` (``ctx.deprecate_patch``):
        the old path is gone; the marker, if recorded, is replayed, none is recorded.
        """
        call = "ctx.deprecate_patch" if deprecated else "ctx.patched"
        if not isinstance(patch_id, str) or not patch_id.strip() or "\x00" in patch_id:
            raise StepUsageError(
                f"{call}: the patch id must be a non-empty string without NUL characters, "
                f"got {patch_id!r}"[:300]
            )
        if len(patch_id) > memo.MAX_STEP_ID_LENGTH:
            raise StepUsageError(
                f"{call}: the patch id is {len(patch_id)} characters long; the limit is "
                f"{memo.MAX_STEP_ID_LENGTH}"
            )
        site = _caller_site()
        known = self._patches.get(patch_id)
        if known is not None:
            answer, first = known
            if site != first:
                raise StepUsageError(
                    f"{call}({patch_id!r}) at {site}: this patch id is already used at "
                    f"{first}; a patch id names one change at one place in the workflow, "
                    "so give each patch its own id"
                )
            return answer
        key = memo.patch_key(patch_id)
        stored = self._memos.get(key)
        if stored is not None:
            self._counter.resume_after(stored.position)
            answer = True
        elif deprecated:
            answer = True
        elif self._in_step is not None or self.branch is not None:
            # Read only: a step's function runs on the current code (its outcome is
            # recorded as a whole), and a branch run replays its parent's decision.
            answer = not self._past(self._counter.position)
        elif self._past(self._counter.position):
            answer = False
        else:
            position = self._counter.take()
            now = timezone.now()
            marker = self.new_memo(
                patch_id,
                key,
                position,
                StepKind.PATCH,
                status=StepStatus.COMPLETED,
                started_at=now,
                finished_at=now,
            )
            self.record_patch(marker)
            answer = True
        self._patches[patch_id] = (answer, site)
        return answer

    def record_patch(self, marker: StepResult) -> None:
        """Store a patch's marker (a read-only execution records nothing)."""
        self.save(marker)

    def recorded(self, key: str) -> StepResult | None:
        """The memo stored under ``key`` in this run, if any."""
        return self._memos.get(key)

    @staticmethod
    def output_of(row: StepResult) -> Any:
        """A memo's output; a large one is read now and not kept (see ``LAZY_OUTPUT_BYTES``)."""
        if row.output_bytes <= LAZY_OUTPUT_BYTES:
            return row.output
        output = row.output  # a deferred field: one query
        row.__dict__.pop("output", None)  # deferred again: the run does not hold it
        return output

    @contextlib.contextmanager
    def running(self, step_id: str, attempt: int) -> Iterator[None]:
        """While a step's function runs: ``ctx.attempt`` is ``attempt``; no step may nest."""
        self.attempt = attempt
        self._in_step = step_id
        started = time.monotonic()
        try:
            yield
        finally:
            self._in_step = None
            self._try_seconds = time.monotonic() - started

    # --- recording ------------------------------------------------------------------
    def new_memo(
        self, step_id: str, key: str, position: int, kind: str, **fields: Any
    ) -> StepResult:
        """A new, unsaved memo of this run."""
        return build(
            StepResult,
            run_id=self.run.pk,
            step_id=step_id,
            key=key,
            position=position,
            kind=kind,
            **fields,
        )

    def save(
        self,
        row: StepResult,
        *,
        then: Callable[[], None] | None = None,
        keep_if_cancelled: bool = False,
        suspend: tuple[str, datetime] | None = None,
        hold: bool = False,
    ) -> None:
        """Store ``row`` fenced by the lease, and remember it for the rest of the run.

        ``then`` runs in the same transaction after the memo is saved.
        ``keep_if_cancelled`` keeps the memo of a step body that already ran if the run
        was cancelled meanwhile. ``suspend=(status, until)`` releases the run in the same
        transaction and rings for it at ``until``.

        ``hold`` (a completed ``step.run``, whose body already ran): in a run that can end
        quietly (:func:`workflows.lifecycle.ends_quietly`), the memo is held back until
        the workflow goes on: stored before the next step begins or anything else is
        written (:meth:`store_held`), or, if the workflow returns first, in the same
        transaction as the run's end (:meth:`complete`), one commit instead of two.
        Meanwhile only the workflow's own code runs; a worker that dies then runs the
        step again, as one that dies before a memo is stored always does.
        """
        self.store_held()
        if hold and self._holds(row):
            self._held = (row, self._duration(row))
            self.remember(row)
            return
        released = None
        if suspend is not None:
            status, until = suspend
            released = (status, until, self.due(until))
        committed = self.guard(
            runstore.save_step,
            self.run.pk,
            self.token,
            row,
            then=then,
            suspend=released,
            keep_if_cancelled=keep_if_cancelled,
            clear_lost=self.lost > 0,
        )
        self.lost = 0
        self.remember(row)
        self._recorded(row, committed)
        if suspend is not None:
            doorbell.ring_on_commit([self.run.pk], at=suspend[1])

    def _recorded(self, row: StepResult, committed: bool) -> None:
        """A step's execution ended with ``row`` saved (and ``committed``): its span,
        signal and counts."""
        telemetry.step_recorded(self.run, row, self._duration(row), committed=committed)

    def _duration(self, row: StepResult) -> float:
        """How long the step's execution took; its span, for a step other than ``run``."""
        if row.kind == StepKind.RUN and self._try_seconds is not None:
            seconds = self._try_seconds  # its span is step.run's own (steps.run_body)
        else:
            seconds = time.monotonic() - self._began
            telemetry.recorded_span(row, time.time_ns() - int(seconds * 1e9))
        self._try_seconds = None
        return seconds

    def _holds(self, row: StepResult) -> bool:
        """Whether ``row`` may be held back (see :meth:`save`): a new memo, stored by the
        fast path of :func:`runstore.save_step` if it were stored now."""
        if self._may_hold is None:
            self._may_hold = lifecycle.ends_quietly(self.run)
        return (
            self._may_hold
            and row.pk is None
            and self.lost == 0
            and runstore.on_its_own(transaction.get_connection())
            and runstore.fresh(self.token)
        )

    def store_held(self) -> None:
        """Store the memo held back (see :meth:`save`), if any, as :meth:`save` would
        have: fenced by the lease, kept if the run was cancelled meanwhile."""
        held, self._held = self._held, None
        if held is not None:
            row, seconds = held
            committed = self.guard(
                runstore.save_step, self.run.pk, self.token, row, keep_if_cancelled=True
            )
            telemetry.step_recorded(self.run, row, seconds, committed=committed)

    def complete(self, output: Any) -> bool:
        """End the run as completed with ``output`` (JSON); ``False`` if it was not ours
        to end (cancelled meanwhile). A memo held back is stored in the same transaction
        as the end when the run ends quietly; otherwise first, as :meth:`store_held`
        does (which may raise :class:`RunCancelled` or :class:`LeaseLost`)."""
        if self._held is not None:
            row, seconds = self._held
            if lifecycle.finish_with_memo(
                self.run,
                self.token,
                output,
                row,
                recorded=lambda: telemetry.step_recorded(self.run, row, seconds, committed=True),
            ):
                self._held = None
                return True
            self.store_held()
        return lifecycle.finish(self.run, self.token, RunStatus.COMPLETED, output=output)

    def remember(self, row: StepResult) -> None:
        """Use ``row`` as the step's memo for the rest of this execution."""
        self._memos[row.key] = row
        if row.run_id == self._history:
            self._last_position = max(self._last_position, row.position)

    # --- suspending -----------------------------------------------------------------
    def suspend(self, status: str, until: datetime | None) -> None:
        """Release the run into ``status`` (sleeping or waiting) until ``until`` (or an
        arrival, when ``None``); ring for it at ``until``."""
        self.store_held()
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

    def atomic(self) -> GuardedAtomic:
        """A transaction whose database errors become :class:`EngineInterrupt` (a memo
        held back is stored first)."""
        self.store_held()
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


def _caller_site() -> str:
    """``file:line`` of the workflow code that called ``ctx.patched`` (two frames up)."""
    frame = sys._getframe(3)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _no_memos_yet(run: WorkflowRun) -> bool:
    """Whether the claim that gave us ``run`` found it never started (PostgreSQL's claim
    says so): then it has no memo to read, unless it is a replay (its copied memos) or
    a branch (its parent's)."""
    return getattr(run, "first_start", False) and not run.is_branch and run.replay_of_id is None


def _memos(rows: Any) -> list[StepResult]:
    """A run's memos in one query, with the outputs under ``LAZY_OUTPUT_BYTES`` only."""
    small = Case(
        When(output_bytes__lte=LAZY_OUTPUT_BYTES, then=F("output")),
        default=Value(None),
        output_field=JSONField(),
    )
    memos = list(rows.defer("output").annotate(small_output=small))
    for row in memos:
        if row.output_bytes <= LAZY_OUTPUT_BYTES:
            row.output = row.small_output
        del row.small_output
    return memos


class StepKindBase:
    """Base of the step kinds: each reaches its run only through :class:`Execution`."""

    def __init__(self, execution: Execution) -> None:
        self._ex = execution
