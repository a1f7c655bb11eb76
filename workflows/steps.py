"""The step API: ``ctx.step.run``, ``send_event``, ``sleep`` and ``sleep_until``.

Each call is keyed (:mod:`workflows.memo`); a call whose memo exists returns the stored
outcome and runs nothing. A new step costs one commit: its memo and, for
``send_event``, its events are written in one fenced transaction. ``sleep`` and a retry
suspend by raising :class:`Suspend`, a ``BaseException`` the executor catches, so no
worker is held while the run waits.
"""

import json
import math
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, transaction
from django.utils import timezone

from eventbus import bus, validation
from eventbus.exceptions import EventError
from eventbus.models import Event
from workflows import (
    conf,
    doorbell,
    durations,
    errors,
    leases,
    lifecycle,
    matching,
    memo,
    registry,
    waits,
)
from workflows.context_types import EventView
from workflows.exceptions import (
    NestedStepError,
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    StepUsageError,
    UnknownWorkflowError,
)
from workflows.models import (
    RunStatus,
    StepKind,
    StepResult,
    StepStatus,
    Wait,
    WaitKind,
    WorkflowRun,
)

if TYPE_CHECKING:
    from workflows.engine import Execution


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


class _GuardedAtomic:
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


#: Most branches one ``step.parallel`` may start.
MAX_BRANCHES = 100


class EngineInterrupt(BaseException):
    """The engine could not store a step (e.g. the database went away).

    Nothing is marked failed: the lease expires and another worker resumes the run.
    """


class Step:
    """The ``ctx.step`` object of a run."""

    def __init__(self, execution: "Execution") -> None:
        self._ex = execution

    # --- step.run ------------------------------------------------------------------
    def run(self, step_id: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once per run and return its JSON result.

        The result is stored before the workflow goes on; a retry or replay returns the
        stored value. A raising ``fn`` is retried up to the workflow's ``retries`` with
        exponential backoff; after the last try this raises :class:`StepError`.
        """
        key, position, stored = self._begin("run", step_id, StepKind.RUN)
        if not callable(fn):
            raise StepUsageError(
                f"step.run({step_id!r}): the second argument must be a callable, "
                f"got {type(fn).__name__}"
            )
        return self._run(step_id, key, position, stored, fn, args, kwargs)

    def _run(
        self,
        step_id: str,
        key: str,
        position: int,
        stored: StepResult | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if stored is not None:
            if stored.status == StepStatus.COMPLETED:
                return stored.output
            if stored.status == StepStatus.FAILED:
                raise self._step_error(stored)
        attempt = stored.attempt if stored is not None else 0
        ex = self._ex
        ex.attempt = attempt
        started = timezone.now()
        failure: BaseException | None = None
        ex.in_step = step_id
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            failure = exc
        finally:
            ex.in_step = None
        output = None
        if failure is None:
            try:
                output = self._jsonify(value, f"the result of step {step_id!r}")
            except ValueError as exc:
                failure = NonRetriableError(
                    f"step {step_id!r} returned a value that is not JSON-serialisable: {exc}"
                )
        row = stored or self._memo(
            step_id,
            key,
            position,
            StepKind.RUN,
        )
        if stored is None:
            row.started_at = started
        now = timezone.now()
        if failure is None:
            row.status, row.output, row.error = StepStatus.COMPLETED, output, None
            row.attempt, row.wake_at, row.finished_at = attempt, None, now
            self._save(row, keep_if_cancelled=True)
            ex.memos[key] = row
            return output
        error = errors.describe(failure)
        retriable = not isinstance(failure, NonRetriableError | StepUsageError)
        if not retriable or attempt >= ex.workflow.retries:
            row.status, row.error, row.attempt = StepStatus.FAILED, error, attempt
            row.wake_at, row.finished_at = None, now
            self._save(row, keep_if_cancelled=True)
            ex.memos[key] = row
            raise self._step_error(row)
        at = now + self._retry_delay(failure, attempt)
        row.status, row.error, row.attempt, row.wake_at = (
            StepStatus.RETRYING,
            error,
            attempt + 1,
            at,
        )
        ex.logger.warning(
            "step %r failed (try %d of %d), retrying at %s: %s",
            step_id,
            attempt + 1,
            ex.workflow.retries + 1,
            at.isoformat(),
            error["message"],
        )
        self._save(row, keep_if_cancelled=True, suspend=(RunStatus.QUEUED, at, self._due(at)))
        doorbell.ring_on_commit([ex.run.pk], at=at)
        raise Suspend()

    # --- step.send_event -----------------------------------------------------------
    def send_event(
        self,
        step_id: str,
        name: str | None = None,
        data: dict[str, Any] | None = None,
        ts: float | None = None,
        id: str | None = None,
        *,
        events: list[dict[str, Any]] | None = None,
    ) -> None:
        """Emit one event (or a batch with ``events=[…]``) into the run's workspace.

        Completes at once and never waits for the workflows it triggers. A ``ts`` in the
        future (Unix ms) defers emission to that time; the database holds it until then.
        A retried or replayed run does not emit again.
        """
        key, position, stored = self._begin("send_event", step_id, StepKind.SEND_EVENT)
        try:
            if events is not None:
                if any(value is not None for value in (name, data, ts, id)):
                    raise EventError("give either name/data/ts/id or events=[...], not both")
                specs = validation.batch(events)
            else:
                if name is None:
                    raise EventError("name is required (or events=[...] for a batch)")
                specs = [validation.event(name, data, ts, id)]
        except EventError as exc:
            raise EventError(f"step.send_event({step_id!r}): {exc}") from None
        if stored is not None:
            return
        ex = self._ex
        event_ids = [uuid.uuid4() for _ in specs]
        now = timezone.now()
        row = self._memo(
            step_id,
            key,
            position,
            StepKind.SEND_EVENT,
            status=StepStatus.COMPLETED,
            output={"event_ids": [str(event_id) for event_id in event_ids]},
            started_at=now,
            finished_at=now,
        )

        def store_events() -> None:
            ids = bus.store(
                specs,
                ex.run.workspace,
                source_run_id=ex.run.pk,
                source_step_id=row.pk,
                event_ids=event_ids,
            )
            if ids != row.output["event_ids"]:  # some ids were idempotency-key repeats
                row.output = {"event_ids": ids}
                row.save(update_fields=["output"])

        self._save(row, then=store_events)
        ex.memos[key] = row
        return

    # --- step.sleep / step.sleep_until ------------------------------------------------
    def sleep(self, step_id: str, duration: timedelta | float) -> None:
        """Suspend the run for ``duration`` (a ``timedelta`` or seconds); no worker is held."""
        key, position, stored = self._begin("sleep", step_id, StepKind.SLEEP)
        if isinstance(duration, timedelta):
            seconds = duration.total_seconds()
        elif isinstance(duration, int | float) and not isinstance(duration, bool):
            seconds = float(duration)
        else:
            raise StepUsageError(
                f"step.sleep({step_id!r}): duration must be a timedelta or a number of "
                f"seconds, got {type(duration).__name__}"
            )
        if not math.isfinite(seconds) or seconds < 0:
            raise StepUsageError(
                f"step.sleep({step_id!r}): duration must be zero or more, got {duration!r}"
            )
        try:
            wake = timezone.now() + timedelta(seconds=seconds)
        except OverflowError:
            raise StepUsageError(
                f"step.sleep({step_id!r}): duration {duration!r} is too long"
            ) from None
        self._sleep(step_id, key, position, stored, wake)

    def sleep_until(self, step_id: str, when: datetime | float) -> None:
        """Suspend the run until ``when`` (an aware ``datetime`` or Unix milliseconds)."""
        key, position, stored = self._begin("sleep_until", step_id, StepKind.SLEEP)
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise StepUsageError(
                    f"step.sleep_until({step_id!r}): the datetime must be aware (with "
                    "tzinfo), e.g. datetime(..., tzinfo=timezone.utc)"
                )
            wake = when
        elif isinstance(when, int | float) and not isinstance(when, bool):
            if not math.isfinite(when) or not 0 <= when <= validation.MAX_TS_MS:
                raise StepUsageError(
                    f"step.sleep_until({step_id!r}): {when!r} is not Unix milliseconds "
                    f"between 0 and {validation.MAX_TS_MS}"
                )
            wake = datetime.fromtimestamp(when / 1000, tz=UTC)
        else:
            raise StepUsageError(
                f"step.sleep_until({step_id!r}): when must be an aware datetime or Unix "
                f"milliseconds, got {type(when).__name__}"
            )
        self._sleep(step_id, key, position, stored, wake)

    def _sleep(
        self,
        step_id: str,
        key: str,
        position: int,
        stored: StepResult | None,
        wake: datetime,
    ) -> None:
        ex = self._ex
        now = timezone.now()
        if stored is not None:
            if stored.status == StepStatus.COMPLETED or stored.wake_at <= now:
                return
            # Rung before the end of the sleep: go back to sleep, nothing new to record.
            self._guard(
                leases.suspend,
                ex.run.pk,
                ex.token,
                RunStatus.SLEEPING,
                stored.wake_at,
                self._due(stored.wake_at),
            )
            doorbell.ring_on_commit([ex.run.pk], at=stored.wake_at)
            raise Suspend()
        row = self._memo(
            step_id,
            key,
            position,
            StepKind.SLEEP,
            started_at=now,
            wake_at=wake,
        )
        if wake <= now:
            row.status, row.finished_at = StepStatus.COMPLETED, now
            self._save(row)
            ex.memos[key] = row
            return
        row.status = StepStatus.SLEEPING
        self._save(row, suspend=(RunStatus.SLEEPING, wake, self._due(wake)))
        doorbell.ring_on_commit([ex.run.pk], at=wake)
        raise Suspend()

    # --- step.wait_for_event --------------------------------------------------------
    def wait_for_event(
        self,
        step_id: str,
        event: str | None = None,
        match: str | None = None,
        timeout: durations.Duration | None = None,
        *,
        if_: str | None = None,
    ) -> EventView | None:
        """Suspend until an event called ``event`` arrives; return it, or ``None`` at the timeout.

        Only events emitted in the run's workspace after the wait began count.
        ``match="data.x"`` requires the incoming event's ``data.x`` to equal the trigger
        event's ``data.x``; ``if_`` is a CEL expression over ``event`` (the trigger) and
        ``async`` (the incoming event). ``timeout`` (required) is a ``timedelta``,
        seconds, or text such as ``"3d"``. No worker is held while the run waits.
        """
        key, position, stored = self._begin("wait_for_event", step_id, StepKind.WAIT_FOR_EVENT)
        where = f"step.wait_for_event({step_id!r})"
        name = self._event_name(event, where)
        try:
            if match is not None:
                matching.check_path(match, where)
            if if_ is not None:
                matching.check_expression(if_, where)
            if timeout is None:
                raise ValueError(
                    f"{where}: timeout is required (how long to wait before returning None), "
                    'e.g. timeout="3d" or timedelta(days=3)'
                )
            wait_for = durations.parse(timeout, f"{where}: timeout")
        except ValueError as exc:
            raise StepUsageError(str(exc)) from None
        ex = self._ex
        if stored is not None:
            if stored.status == StepStatus.WAITING:
                stored = self._settle_wait(stored, timed_out={"event": None})
            if stored.status == StepStatus.COMPLETED:
                found = (stored.output or {}).get("event")
                return EventView(**found) if found else None
            raise self._step_error(stored)
        now = timezone.now()
        expires = now + wait_for
        row = self._memo(
            step_id,
            key,
            position,
            StepKind.WAIT_FOR_EVENT,
            status=StepStatus.WAITING,
            started_at=now,
            wake_at=expires,
        )
        arrived: dict[str, Any] | None = None

        def record() -> None:
            nonlocal arrived
            try:
                arrived = waits.record_event_wait(
                    ex.run,
                    row,
                    name=name,
                    match=match,
                    expression=if_,
                    expires_at=expires,
                    began=now,
                    where=where,
                )
            except ValueError as exc:
                raise StepUsageError(str(exc)) from None
            if arrived is not None:
                row.status, row.output, row.wake_at = StepStatus.COMPLETED, {"event": arrived}, None
                row.finished_at = timezone.now()
                row.save(update_fields=["status", "output", "wake_at", "finished_at"])

        with self._atomic():
            # The event-name lock comes before the run's row lock, as for emitters.
            waits.lock_for_wait(ex.run.workspace_id, name)
            self._save(row, then=record)
            if arrived is None:
                self._suspend_waiting(expires)
        ex.memos[key] = row
        if arrived is None:
            raise Suspend()
        return EventView(**arrived)

    # --- step.invoke ----------------------------------------------------------------
    def invoke(
        self,
        step_id: str,
        workflow: Any = None,
        data: dict[str, Any] | None = None,
        timeout: durations.Duration | None = None,
    ) -> Any:
        """Start ``workflow`` (a ``@workflow`` function or its id) as a child run; return its value.

        The parent is suspended, without holding a worker, until the child ends. A child
        that fails or is cancelled, an unknown workflow, or the ``timeout`` raises
        :class:`StepError` here (the child keeps running after a timeout). The child's
        ``ctx.event`` is a ``workflows/invoke`` event with ``data``.
        """
        key, position, stored = self._begin("invoke", step_id, StepKind.INVOKE)
        where = f"step.invoke({step_id!r})"
        if isinstance(workflow, str):
            workflow_id = workflow
        elif isinstance(workflow, registry.Workflow):
            workflow_id = workflow.id
        else:
            raise StepUsageError(
                f"{where}: workflow must be a @workflow function or a workflow id (str), "
                f"got {type(workflow).__name__}"
                + (" (decorate the function with @workflow)" if callable(workflow) else "")
            )
        try:
            spec = validation.event(lifecycle.INVOKED, {} if data is None else data)
            limit = None if timeout is None else durations.parse(timeout, f"{where}: timeout")
        except (EventError, ValueError) as exc:
            raise StepUsageError(f"{where}: {exc}") from None
        ex = self._ex
        if stored is not None:
            if stored.status == StepStatus.WAITING:
                stored = self._settle_wait(stored, timed_out=None)
            if stored.status == StepStatus.COMPLETED:
                return (stored.output or {}).get("output")
            raise self._step_error(stored)
        now = timezone.now()
        row = self._memo(
            step_id,
            key,
            position,
            StepKind.INVOKE,
            started_at=now,
        )
        try:
            child_wf = registry.get(workflow_id)
        except UnknownWorkflowError as exc:
            row.status, row.error, row.finished_at = StepStatus.FAILED, errors.describe(exc), now
            self._save(row)
            ex.memos[key] = row
            raise self._step_error(row) from None
        expires = now + limit if limit is not None else None
        child_id = uuid.uuid4()
        row.status, row.wake_at = StepStatus.WAITING, expires
        row.output = {"run_id": str(child_id), "workflow_id": child_wf.id}

        def start_child() -> None:
            (event_id,) = bus.store(
                [spec],
                ex.run.workspace,
                source_run_id=ex.run.pk,
                source_step_id=row.pk,
                deliver=False,
            )
            trigger = Event.objects.get(pk=event_id)
            child = lifecycle.new_run(trigger, child_wf, id=child_id, parent_id=ex.run.pk)
            child.save(force_insert=True)
            if child_wf.cancel_on:
                waits.cancel_waits_for([(child, child_wf)])
            Wait.objects.create(
                run_id=ex.run.pk,
                step=row,
                kind=WaitKind.INVOKE,
                workspace_id=ex.run.workspace_id,
                child_run=child,
                expires_at=expires,
            )
            doorbell.ring_on_commit([child.pk])

        with self._atomic():
            self._save(row, then=start_child)
            self._suspend_waiting(expires)
        ex.memos[key] = row
        raise Suspend()

    # --- step.parallel --------------------------------------------------------------
    def parallel(self, step_id: str, branches: Any) -> list[Any]:
        """Run each zero-argument callable of ``branches`` as its own step, at the same time.

        Each branch runs as a separate worker task, with its own memo and retries (the
        workflow's ``retries``); the workflow resumes once all are done and gets their
        results in order. A branch that fails for good raises :class:`StepError` here,
        once every branch has ended. Use ``functools.partial`` or a ``lambda`` to pass
        arguments. Branch functions are plain code: they cannot call ``ctx.step``.
        """
        key, position, stored = self._begin("parallel", step_id, StepKind.PARALLEL)
        where = f"step.parallel({step_id!r})"
        if not isinstance(branches, list | tuple) or not branches:
            raise StepUsageError(
                f"{where}: branches must be a non-empty list of functions taking no "
                f"arguments, got {branches!r}"[:500]
            )
        if len(branches) > MAX_BRANCHES:
            raise StepUsageError(
                f"{where}: {len(branches)} branches; the limit is {MAX_BRANCHES} "
                "(fan out more work with step.send_event)"
            )
        for index, branch in enumerate(branches):
            if not callable(branch):
                raise StepUsageError(
                    f"{where}: branch {index} is a {type(branch).__name__}, not a function"
                )
        ex = self._ex
        if ex.branch is not None and ex.branch[0] == key:
            index = ex.branch[1]
            if index >= len(branches):
                raise NonDeterminismError(
                    f"{where}: this run was started as branch {index}, but the code now "
                    f"has {len(branches)} branches"
                )
            branch_id = f"{step_id}[{index}]"
            branch_key = memo.key_for(f"{key}:branch:{index}")
            try:
                value = self._run(
                    branch_id, branch_key, 0, ex.memos.get(branch_key), branches[index], (), {}
                )
            except StepError as exc:
                raise BranchDone(None, failure=exc) from None
            raise BranchDone(value)
        if stored is not None:
            if stored.status == StepStatus.WAITING:
                stored = self._settle_parallel(stored, len(branches))
            if stored.status == StepStatus.COMPLETED:
                return list(stored.output or [])
            raise self._step_error(stored)
        now = timezone.now()
        row = self._memo(
            step_id,
            key,
            position,
            StepKind.PARALLEL,
            status=StepStatus.WAITING,
            started_at=now,
            output={"branches": len(branches)},
        )

        def start_branches() -> None:
            runs = [
                WorkflowRun(
                    id=uuid.uuid4(),
                    workspace_id=ex.run.workspace_id,
                    workflow_id=ex.run.workflow_id,
                    event_id=ex.run.event_id,
                    parent_id=ex.run.pk,
                    branch_key=key,
                    branch_index=index,
                    status=RunStatus.QUEUED,
                    created_at=now,
                    due_at=now + timedelta(seconds=conf.get().RING_TIMEOUT_SECONDS),
                )
                for index in range(len(branches))
            ]
            WorkflowRun.objects.bulk_create(runs)
            Wait.objects.bulk_create(
                [
                    Wait(
                        run_id=ex.run.pk,
                        step=row,
                        kind=WaitKind.PARALLEL,
                        workspace_id=ex.run.workspace_id,
                        child_run=run,
                    )
                    for run in runs
                ]
            )
            doorbell.ring_on_commit(run.pk for run in runs)

        with self._atomic():
            self._save(row, then=start_branches)
            self._suspend_waiting(None)
        ex.memos[key] = row
        raise Suspend()

    # --- waiting machinery ----------------------------------------------------------
    def _event_name(self, event: Any, where: str) -> str:
        try:
            return validation.event(event, {}).name
        except EventError as exc:
            raise StepUsageError(f"{where}: event: {exc}") from None

    def _atomic(self) -> Any:
        return _GuardedAtomic()

    def _suspend_waiting(self, until: datetime | None) -> None:
        ex = self._ex
        due = self._due(until) if until is not None else None
        self._guard(leases.suspend, ex.run.pk, ex.token, RunStatus.WAITING, until, due)
        if until is not None:
            doorbell.ring_on_commit([ex.run.pk], at=until)

    def _settle_wait(self, stored: StepResult, *, timed_out: Any) -> StepResult:
        """A waiting step met again: time it out if due, else go back to waiting.

        Returns the step's memo once it is settled (by us at the timeout, or by the
        event or child that won the race).
        """
        ex = self._ex
        if stored.wake_at is None or stored.wake_at > timezone.now():
            if not Wait.objects.filter(step=stored).exists():
                return self._reload(stored)
            # Rung before anything arrived (a duplicate message): wait on.
            self._suspend_waiting(stored.wake_at)
            raise Suspend()
        with self._atomic():
            gone = Wait.objects.filter(step=stored).delete()[0]
            if not gone:
                return self._reload(stored)
            stored.finished_at, stored.wake_at = timezone.now(), None
            if stored.kind == StepKind.INVOKE:
                child = (stored.output or {}).get("run_id")
                stored.status = StepStatus.FAILED
                stored.error = {
                    "type": "InvokeTimeout",
                    "message": f"the invoked run {child} did not end in time; it keeps running",
                    "traceback": "",
                    "child_run_id": child,
                }
            else:
                stored.status, stored.output = StepStatus.COMPLETED, timed_out
            self._save(stored)
        ex.memos[stored.key] = stored
        return stored

    def _reload(self, stored: StepResult) -> StepResult:
        fresh = StepResult.objects.get(pk=stored.pk)
        self._ex.memos[fresh.key] = fresh
        if fresh.status == StepStatus.WAITING:
            raise NonRetriableError(f"step {fresh.step_id!r} has no wait and no outcome")
        return fresh

    def _settle_parallel(self, stored: StepResult, count: int) -> StepResult:
        ex = self._ex
        if Wait.objects.filter(step=stored).exists():
            self._suspend_waiting(None)
            raise Suspend()
        branches = list(
            WorkflowRun.objects.filter(parent_id=ex.run.pk, branch_key=stored.key).order_by(
                "branch_index"
            )
        )
        if len(branches) != count:
            raise NonDeterminismError(
                f"step {stored.step_id!r} was recorded with {len(branches)} branches, but "
                f"the code now has {count}"
            )
        now = timezone.now()
        stored.finished_at = now
        failed = next((run for run in branches if run.status != RunStatus.COMPLETED), None)
        if failed is None:
            stored.status, stored.output = StepStatus.COMPLETED, [run.output for run in branches]
        else:
            detail = failed.error or {}
            verb = "was cancelled" if failed.status == RunStatus.CANCELLED else "failed"
            stored.status = StepStatus.FAILED
            stored.error = {
                "type": detail.get("type", "Error"),
                "message": f"branch {failed.branch_index} {verb}: {detail.get('message', '')}",
                "traceback": detail.get("traceback", ""),
                "branch": failed.branch_index,
                "branch_run_id": str(failed.pk),
            }
        self._save(stored)
        ex.memos[stored.key] = stored
        return stored

    # --- shared machinery ---------------------------------------------------------
    def _begin(self, call: str, step_id: Any, kind: str) -> tuple[str, int, StepResult | None]:
        ex = self._ex
        if ex.in_step is not None:
            raise NestedStepError(
                f"step.{call}({step_id!r}) was called inside the function of step "
                f"{ex.in_step!r}: steps cannot be nested; call ctx.step.* only from the "
                "workflow function"
            )
        memo.check_step_id(step_id, call)
        key, position = ex.counter.next(step_id)
        stored = ex.memos.get(key)
        if (
            ex.branch is not None
            and stored is None
            and not (kind == StepKind.PARALLEL and key == ex.branch[0])
        ):
            ex.fatal = NonDeterminismError(
                f"a branch of step.parallel reached step {step_id!r}, which its parent run "
                "had not recorded: the workflow must reach its parallel step the same way "
                "every time"
            )
            raise ex.fatal
        if stored is not None and stored.kind != kind:
            ex.fatal = NonDeterminismError(
                f"step {step_id!r} was recorded as a {stored.kind!r} step, but the code now "
                f"calls step.{call} there: the workflow changed under a run that had "
                "already recorded this step. Replay the run from an earlier step, or keep "
                "the old code until such runs finish"
            )
            raise ex.fatal
        return key, position, stored

    def _memo(self, step_id: str, key: str, position: int, kind: str, **fields: Any) -> StepResult:
        """A new, unsaved memo of this run."""
        return StepResult(
            run_id=self._ex.run.pk, step_id=step_id, key=key, position=position, kind=kind, **fields
        )

    def _save(self, row: StepResult, **options: Any) -> None:
        self._guard(leases.save_step, self._ex.run.pk, self._ex.token, row, **options)

    @staticmethod
    def _guard(operation: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            operation(*args, **kwargs)
        except DatabaseError as exc:
            raise EngineInterrupt(exc) from exc

    def _due(self, at: datetime) -> datetime:
        """When the dispatcher should ring for a wake-up at ``at``.

        Within the eta horizon the broker delivers the bell at ``at``; the dispatcher
        only rings if that message was lost.
        """
        settings = conf.get()
        if at - timezone.now() <= timedelta(seconds=settings.ETA_HORIZON_SECONDS):
            return at + timedelta(seconds=settings.RING_TIMEOUT_SECONDS)
        return at

    def _retry_delay(self, failure: BaseException, attempt: int) -> timedelta:
        settings = conf.get()
        if isinstance(failure, RetryAfterError):
            after = failure.retry_after
            if isinstance(after, datetime):
                return max(after - timezone.now(), timedelta(0))
            if isinstance(after, timedelta):
                return max(after, timedelta(0))
            return timedelta(seconds=max(float(after), 0.0))
        # Exponential backoff with "full jitter" between half and the whole delay.
        ceiling = min(settings.RETRY_BASE_SECONDS * (2**attempt), settings.RETRY_MAX_SECONDS)
        return timedelta(seconds=ceiling * (0.5 + random.random() / 2))

    def _jsonify(self, value: Any, where: str) -> Any:
        return to_json(value, where)

    def _step_error(self, row: StepResult) -> StepError:
        error = row.error or {}
        tries = row.attempt + 1
        return StepError(
            f"step {row.step_id!r} failed after {tries} {'try' if tries == 1 else 'tries'}: "
            f"{error.get('type', 'Error')}: {error.get('message', '')}",
            step_id=row.step_id,
            error=error,
        )


def to_json(value: Any, where: str) -> Any:
    """``value`` as it will read back from the database; ``ValueError`` if it is not JSON."""
    encoded = validation.encode_json(
        value, max_depth=200, max_bytes=conf.get().MAX_OUTPUT_BYTES, where=where
    )
    # Hand back exactly what a replay will read, not the caller's object.
    return json.loads(encoded)
