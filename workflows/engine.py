"""Executing a run: claim it, replay its memos, run the workflow until it ends or suspends.

A run executes its steps one after another inside one worker task. Its memos are loaded
in one query; each new step costs one commit. Outcomes:

- the workflow returns: the run is ``completed`` with its JSON output;
- a step suspends (sleep, retry backoff): the run is released, no worker is held;
- the workflow raises (a ``StepError`` it did not catch, a bug, a non-determinism): the
  run is ``failed`` with the error and traceback; a non-determinism in a workflow with
  ``on_nondeterminism="pause"`` makes it ``paused`` instead, until ``resume_run``;
- the engine cannot reach the database: nothing is marked, the lease expires and another
  worker resumes the run.
"""

import logging
import uuid
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

from celery.exceptions import WorkerShutdown, WorkerTerminate
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from eventbus import bus
from workflows import conf, heartbeat, lifecycle, registry, runstore, telemetry
from workflows.context import Context
from workflows.exceptions import (
    BranchDone,
    EngineInterrupt,
    LeaseLost,
    NonDeterminismError,
    RunCancelled,
    Suspend,
    UnknownWorkflowError,
    describe,
)
from workflows.execution import Execution, to_json
from workflows.models import RunStatus, WorkflowRun

logger = logging.getLogger("workflows.engine")


def execute(run_id: Any, *, keep_lease_alive: bool = False, handed: bool = False) -> str:
    """Execute the run if it is ours to run; return what happened.

    One of ``"skipped"`` (not runnable: finished, running elsewhere, not yet due),
    ``"completed"``, ``"failed"``, ``"paused"``, ``"suspended"``, ``"cancelled"``,
    ``"lost"`` (another worker took it over) or ``"deferred"`` (its workflow is not
    registered here). ``handed``: the run was handed a concurrency slot (a hint for
    the claim, see :func:`workflows.runstore.claim`).
    """
    token = uuid.uuid4().hex
    before = timezone.now()
    run = runstore.claim(run_id, token, shaped=handed)
    if run is None:
        return "skipped"
    if run.started_at is not None and run.started_at >= before:
        telemetry.run_started(run)  # this claim began the run
    with telemetry.run_span(run) as span:
        result = _execute(run, token, keep_lease_alive)
        telemetry.outcome(span, result)
    return result


def _execute(run: WorkflowRun, token: str, keep_lease_alive: bool) -> str:
    try:
        wf = registry.get(run.workflow_id)
    except UnknownWorkflowError:
        # Likely a deploy in progress: another worker may know it. Try again later.
        delay = conf.get().RING_TIMEOUT_SECONDS
        logger.error(
            "run %s: workflow %r is not registered in this worker; retrying in %ss",
            run.pk,
            run.workflow_id,
            delay,
            extra=telemetry.log_fields(run),
        )
        runstore.release_for_retry(run.pk, token, timezone.now() + timedelta(seconds=delay))
        return "deferred"
    timed_out = _check_timeouts(run, wf)
    if timed_out:
        lifecycle.cancel(run.pk, reason=timed_out)
        return "cancelled"
    execution = Execution(run, wf, token)
    ctx = Context(execution)
    keeper = heartbeat.track(run.pk, token) if keep_lease_alive else nullcontext()
    with keeper, bus.bound_to(run.workspace):
        try:
            result = wf.fn(ctx)
        except Suspend:
            return "suspended"
        except BranchDone as done:
            if done.failure is not None:
                return _fail(execution, done.failure)
            result = done.value
            if lifecycle.finish(run, token, RunStatus.COMPLETED, output=result):
                return "completed"
            return "cancelled"
        except (RunCancelled, LeaseLost) as exc:
            return _stopped(ctx.logger, exc)
        except EngineInterrupt as exc:
            ctx.logger.error("could not store a step (%s); the run will be resumed", exc)
            raise
        except (OperationalError, InterfaceError) as exc:
            # The database connection failed under the workflow, outside a step body:
            # not the workflow's fault. Nothing is marked; the lease expires and another
            # execution resumes the run from its memos.
            ctx.logger.error("lost the database connection (%s); the run will be resumed", exc)
            raise EngineInterrupt(exc) from exc
        except (WorkerShutdown, WorkerTerminate):
            raise  # the worker is stopping; the run is resumed from its memos
        except BaseException as exc:
            # Any other BaseException (SystemExit, KeyboardInterrupt, a custom one) from
            # the workflow body fails the run, as an Exception would.
            return _fail(execution, execution.fatal or exc)
        if execution.fatal is not None:
            return _fail(execution, execution.fatal)
        try:
            output = to_json(result, f"the return value of workflow {wf.id!r}")
        except ValueError as exc:
            return _fail(execution, ValueError(f"{exc}; return JSON-serialisable data"))
        try:
            completed = execution.complete(output)  # with the last step's memo, if held
        except (RunCancelled, LeaseLost) as exc:
            return _stopped(ctx.logger, exc)
        if completed:
            ctx.logger.info("completed")
            return "completed"
        return "cancelled"


def _stopped(log: logging.LoggerAdapter, exc: RunCancelled | LeaseLost) -> str:
    """The outcome of an execution stopped because the run is no longer ours (logged
    on the run's ``log``)."""
    if isinstance(exc, RunCancelled):
        log.info("cancelled while running; stopped")
        return "cancelled"
    log.warning("lease lost to another worker; stopped")
    return "lost"


def _check_timeouts(run: WorkflowRun, wf: registry.Workflow) -> str | None:
    """Why the run must be cancelled now (its start timeout passed), else ``None``.

    On its first start, the start deadline gives way to the finish deadline.
    """
    now = timezone.now()
    finish = wf.timeouts.finish
    if run.timeout_at is not None and run.timeout_at <= now:
        started = bool(finish and run.started_at and run.timeout_at == run.started_at + finish)
        return lifecycle.timeout_reason(run.workflow_id, started=started)
    deadline = run.started_at + finish if finish and run.started_at else None
    if not run.is_branch:
        runstore.set_deadline(run, deadline)
    return None


def _fail(execution: Execution, exc: BaseException) -> str:
    try:
        execution.store_held()  # the last step's memo, if held back: it ran
    except (RunCancelled, LeaseLost) as stopped:
        return _stopped(execution.logger, stopped)
    error = describe(exc)
    step_id = getattr(exc, "step_id", "")
    if step_id:
        error["step_id"] = step_id
    if isinstance(exc, NonDeterminismError) and execution.workflow.on_nondeterminism == "pause":
        return _pause(execution, exc, error)
    if lifecycle.finish(execution.run, execution.token, RunStatus.FAILED, error=error):
        logger.warning(
            "run %s of %r failed: %s",
            execution.run.pk,
            execution.workflow.id,
            error["message"],
            extra=telemetry.log_fields(execution.run, step_id),
        )
        return "failed"
    return "cancelled"


def _pause(execution: Execution, exc: NonDeterminismError, error: dict[str, Any]) -> str:
    error.update(recorded=exc.recorded, called=exc.called)
    if runstore.pause(execution.run.pk, execution.token, error):
        logger.warning(
            "run %s of %r paused: %s",
            execution.run.pk,
            execution.workflow.id,
            error["message"],
            extra=telemetry.log_fields(execution.run, error.get("step_id")),
        )
        return "paused"
    return "cancelled"
