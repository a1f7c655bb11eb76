"""The step kinds that coordinate: ``step.wait_for_event``, ``step.invoke``, ``step.parallel``.

Each records its memo with status ``waiting`` and a :class:`~workflows.models.Wait`
(see :mod:`workflows.waits`), suspends the run in the same transaction, and raises
:class:`~workflows.exceptions.Suspend`. When the run executes again, the memo holds the
outcome (the event, the child's value, or the branches' results), or the wait timed out.
Like every step kind, these reach the run only through the execution protocol
(:class:`workflows.execution.Execution`).
"""

import uuid
from typing import Any

from django.utils import timezone

from eventbus import bus, validation
from eventbus.exceptions import EventError
from eventbus.models import Event
from workflows import conf, durations, lifecycle, matching, memo, registry, steps, waits
from workflows.exceptions import (
    BranchDone,
    NonDeterminismError,
    NonRetriableError,
    StepError,
    StepUsageError,
    Suspend,
    UnknownWorkflowError,
    describe,
    error_record,
)
from workflows.execution import StepKindBase
from workflows.models import (
    RunStatus,
    StepKind,
    StepResult,
    StepStatus,
    Wait,
    WaitKind,
    WorkflowRun,
)
from workflows.payloads import EventView

#: Most branches one ``step.parallel`` may start.
MAX_BRANCHES = 100


class CoordinationSteps(StepKindBase):
    """``step.wait_for_event``, ``step.invoke`` and ``step.parallel``."""

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
        key, position, stored = self._ex.begin("wait_for_event", step_id, StepKind.WAIT_FOR_EVENT)
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
            raise ex.step_error(stored)
        now = timezone.now()
        expires = now + wait_for
        row = ex.new_memo(
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

        with ex.atomic():
            # The event-name lock comes before the run's row lock, as for emitters.
            waits.lock_for_wait(ex.run.workspace_id, name)
            ex.save(row, then=record)
            if arrived is None:
                ex.suspend(RunStatus.WAITING, expires)
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
        key, position, stored = self._ex.begin("invoke", step_id, StepKind.INVOKE)
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
            spec = validation.event(
                lifecycle.INVOKED, {} if data is None else data, reserved_ok=True
            )
            limit = None if timeout is None else durations.parse(timeout, f"{where}: timeout")
        except (EventError, ValueError) as exc:
            raise StepUsageError(f"{where}: {exc}") from None
        ex = self._ex
        if stored is not None:
            if stored.status == StepStatus.WAITING:
                stored = self._settle_wait(stored, timed_out=None)
            if stored.status == StepStatus.COMPLETED:
                return (stored.output or {}).get("output")
            raise ex.step_error(stored)
        now = timezone.now()
        row = ex.new_memo(
            step_id,
            key,
            position,
            StepKind.INVOKE,
            started_at=now,
        )
        try:
            child_wf = registry.get(workflow_id)
        except UnknownWorkflowError as exc:
            row.status, row.error, row.finished_at = StepStatus.FAILED, describe(exc), now
            ex.save(row)
            raise ex.step_error(row) from None
        depth = ex.run.depth + 1
        limit_depth = conf.get().MAX_INVOKE_DEPTH
        if depth > limit_depth:
            row.status, row.finished_at = StepStatus.FAILED, now
            row.error = error_record(
                "InvokeDepthExceeded",
                f"{where}: invoking {child_wf.id!r} would make a chain of step.invoke "
                f"{depth} deep; the limit is WORKFLOWS['MAX_INVOKE_DEPTH'] = {limit_depth}",
            )
            ex.save(row)
            raise ex.step_error(row)
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
            child = lifecycle.new_run(
                trigger, child_wf, id=child_id, parent_id=ex.run.pk, depth=depth
            )
            lifecycle.start([(child, child_wf)])
            Wait.objects.create(
                run_id=ex.run.pk,
                step=row,
                kind=WaitKind.INVOKE,
                workspace_id=ex.run.workspace_id,
                child_run=child,
                expires_at=expires,
            )

        with ex.atomic():
            ex.save(row, then=start_child)
            ex.suspend(RunStatus.WAITING, expires)
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
        key, position, stored = self._ex.begin("parallel", step_id, StepKind.PARALLEL)
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
                value = steps.run_body(
                    ex, branch_id, branch_key, 0, ex.recorded(branch_key), branches[index], (), {}
                )
            except StepError as exc:
                raise BranchDone(None, failure=exc) from None
            raise BranchDone(value)
        if stored is not None:
            if stored.status == StepStatus.WAITING:
                stored = self._settle_parallel(stored, len(branches))
            if stored.status == StepStatus.COMPLETED:
                return list(stored.output or [])
            raise ex.step_error(stored)
        now = timezone.now()
        row = ex.new_memo(
            step_id,
            key,
            position,
            StepKind.PARALLEL,
            status=StepStatus.WAITING,
            started_at=now,
            output={"branches": len(branches)},
        )

        def start_branches() -> None:
            runs = lifecycle.start(
                (
                    lifecycle.new_run(
                        ex.run.event,
                        ex.workflow,
                        now=now,
                        parent_id=ex.run.pk,
                        branch_key=key,
                        branch_index=index,
                        depth=ex.run.depth,
                    ),
                    ex.workflow,
                )
                for index in range(len(branches))
            )
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

        with ex.atomic():
            ex.save(row, then=start_branches)
            ex.suspend(RunStatus.WAITING, None)
        raise Suspend()

    # --- waiting machinery ----------------------------------------------------------
    def _event_name(self, event: Any, where: str) -> str:
        try:
            # Waiting for the engine's own events (workflows/run.finished) is allowed.
            return validation.event_name(event, reserved_ok=True)
        except EventError as exc:
            raise StepUsageError(f"{where}: event: {exc}") from None

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
            ex.suspend(RunStatus.WAITING, stored.wake_at)
            raise Suspend()
        with ex.atomic():
            gone = Wait.objects.filter(step=stored).delete()[0]
            if not gone:
                return self._reload(stored)
            stored.finished_at, stored.wake_at = timezone.now(), None
            if stored.kind == StepKind.INVOKE:
                child = (stored.output or {}).get("run_id")
                stored.status = StepStatus.FAILED
                stored.error = error_record(
                    "InvokeTimeout",
                    f"the invoked run {child} did not end in time; it keeps running",
                    child_run_id=child,
                )
            else:
                stored.status, stored.output = StepStatus.COMPLETED, timed_out
            ex.save(stored)
        return stored

    def _reload(self, stored: StepResult) -> StepResult:
        fresh = StepResult.objects.get(pk=stored.pk)
        self._ex.remember(fresh)
        if fresh.status == StepStatus.WAITING:
            raise NonRetriableError(f"step {fresh.step_id!r} has no wait and no outcome")
        return fresh

    def _settle_parallel(self, stored: StepResult, count: int) -> StepResult:
        ex = self._ex
        if Wait.objects.filter(step=stored).exists():
            ex.suspend(RunStatus.WAITING, None)
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
            stored.error = error_record(
                detail.get("type", "Error"),
                f"branch {failed.branch_index} {verb}: {detail.get('message', '')}",
                detail.get("traceback", ""),
                branch=failed.branch_index,
                branch_run_id=str(failed.pk),
            )
        ex.save(stored)
        return stored
