"""What the engine tells the outside about a run: spans, signals, counts, log fields.

The engine calls these hooks at the points of a run's life; each does three things:

- traces (OpenTelemetry, when installed: :mod:`eventbus.tracing`): a ``workflows.run``
  span per execution of a run, a child of the trace context stored with its trigger
  event, and a ``workflows.step`` span per step that executes (never for a replayed
  memo). Without OpenTelemetry the span helpers return a shared null context;
- :mod:`workflows.signals`, sent after the transaction that recorded the change commits,
  robustly (a receiver that raises is logged, the run goes on);
- counts for ``GET /metrics`` (:mod:`workflows.tally`), after the same commit, so a
  rolled-back change is never counted.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from django.db import transaction
from django.dispatch import Signal

from eventbus import tracing
from workflows import signals, tally
from workflows.models import StepResult, StepStatus, WorkflowRun

logger = logging.getLogger("workflows.signals")

#: The tracer's name and the prefix of span and attribute names (sends' spans too).
NAMESPACE = "workflows"
#: Counter names, as stored and as exposed (``GET /metrics``).
RUNS_FINISHED = "workflows_runs_finished_total"
STEPS = "workflows_steps_total"
STEP_DURATION = "workflows_step_duration_seconds"

#: ``engine.execute``'s outcomes as the ``workflows.outcome`` attribute reports them.
_OUTCOMES = {"paused": "paused", "lost": "lost", "deferred": "deferred"}
_NULL = nullcontext()


def log_fields(run: WorkflowRun, step_id: str | None = None) -> dict[str, Any]:
    """The ``extra`` of a log record about ``run`` (and its step, if any)."""
    fields: dict[str, Any] = {"run_id": str(run.pk), "workflow_id": run.workflow_id}
    if step_id:
        fields["step_id"] = step_id
    return fields


# --- traces ---------------------------------------------------------------------------
def run_span(run: WorkflowRun) -> Any:
    """The ``workflows.run`` span of one execution of ``run``, made current (a null
    context without OpenTelemetry); record its outcome with :func:`outcome`."""
    if not tracing.ENABLED:
        return _NULL
    return tracing.tracer().start_as_current_span(
        "workflows.run",
        context=tracing.extract(run.event.trace_context),
        kind=tracing.trace.SpanKind.CONSUMER,
        attributes={
            "workflows.run_id": str(run.pk),
            "workflows.workflow_id": run.workflow_id,
            "workflows.workspace": run.workspace.slug,
        },
    )


def outcome(span: Any, result: str) -> None:
    """Set ``workflows.outcome`` on a run span from ``engine.execute``'s result."""
    if span is None:
        return
    value = _OUTCOMES.get(result, result)
    span.set_attribute("workflows.outcome", value)
    if value == "failed":
        span.set_status(tracing.trace.Status(tracing.trace.StatusCode.ERROR, "the run failed"))


@contextmanager
def _step_span(step_id: str, kind: str, attempt: int) -> Iterator[Any]:
    with tracing.tracer().start_as_current_span(
        "workflows.step",
        attributes={
            "workflows.step_id": step_id,
            "workflows.step_kind": kind,
            "workflows.attempt": attempt,
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def step_span(step_id: str, kind: str, attempt: int) -> Any:
    """The ``workflows.step`` span of a step that executes, made current (so spans of the
    step's own code are its children); a null context when nothing records spans (the
    run's span, current instead, carries the same trace context then)."""
    if not tracing.recording():
        return _NULL
    return _step_span(step_id, kind, attempt)


def step_failed(span: Any, exc: BaseException) -> None:
    """Record a failing try on its step span: the exception, and an error status."""
    if span is None:
        return
    span.record_exception(exc)
    span.set_status(tracing.trace.Status(tracing.trace.StatusCode.ERROR, str(exc)[:200]))


def recorded_span(row: StepResult, began_ns: int) -> None:
    """A ``workflows.step`` span for a step that only records (not ``step.run``, whose
    span covers its function): from when the call began until now; none when nothing
    records spans."""
    if not tracing.recording():
        return
    span = tracing.tracer().start_span(
        "workflows.step",
        start_time=began_ns,
        attributes={
            "workflows.step_id": row.step_id,
            "workflows.step_kind": row.kind,
            "workflows.attempt": row.attempt,
        },
    )
    if row.status == StepStatus.FAILED:
        message = (row.error or {}).get("message", "")
        span.set_status(tracing.trace.Status(tracing.trace.StatusCode.ERROR, message[:200]))
    span.end()


# --- signals and counts -----------------------------------------------------------------
def _send(signal: Signal, sender: str, **kwargs: Any) -> None:
    for receiver, result in signal.send_robust(sender, **kwargs):
        if isinstance(result, Exception):
            run = kwargs["run"]
            step = kwargs.get("step")
            logger.error(
                "a receiver of a workflows signal raised: %r: %s",
                receiver,
                result,
                exc_info=(type(result), result, result.__traceback__),
                extra=log_fields(run, step.step_id if step is not None else None),
            )


def run_started(run: WorkflowRun) -> None:
    """The run's first execution began (its claim has committed)."""
    if run.is_branch:
        return
    transaction.on_commit(lambda: _send(signals.run_started, run.workflow_id, run=run))


def run_ended(run: WorkflowRun, *, committed: bool = False) -> None:
    """In the transaction that ended ``run``: once it commits, count it and signal it
    (now, if ``committed``: the end has committed already)."""
    if run.is_branch:
        return

    def ended() -> None:
        tally.add(RUNS_FINISHED, {"workflow_id": run.workflow_id, "status": run.status})
        _send(signals.run_finished, run.workflow_id, run=run)

    _once_committed(ended, committed)


def step_recorded(
    run: WorkflowRun, row: StepResult, seconds: float, *, committed: bool = False
) -> None:
    """A step's execution ended and its memo was saved: once committed, count and signal.

    ``seconds``: how long that execution took (the function's try for ``step.run``).
    ``committed``: the memo has committed already (no transaction to wait for).
    """
    kind, status = str(row.kind), str(row.status)

    def recorded() -> None:
        tally.add(STEPS, {"kind": kind, "status": status})
        tally.observe(STEP_DURATION, {"kind": kind}, seconds)
        _send(signals.step_finished, run.workflow_id, run=run, step=row)

    _once_committed(recorded, committed)


def _once_committed(fn: Any, committed: bool) -> None:
    """Call ``fn`` once the current transaction commits: now if ``committed`` (what it
    follows has committed already; no ``on_commit`` and its connection lookup)."""
    if committed:
        fn()
    else:
        transaction.on_commit(fn)
