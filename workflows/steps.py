"""The step kinds that run or record something at once: ``run``, ``send_event``, ``sleep``.

Each call is keyed (:mod:`workflows.memo`); a call whose memo exists returns the stored
outcome and runs nothing. A new step costs one commit: its memo and, for
``send_event``, its events are written in one fenced transaction. ``sleep`` and a retry
suspend by raising :class:`~workflows.exceptions.Suspend`, so no worker is held while
the run waits. Like every step kind, these reach the run only through the execution
protocol (:class:`workflows.execution.Execution`).
"""

import math
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.exceptions import WorkerShutdown, WorkerTerminate
from django.utils import timezone

from eventbus import bus, validation
from eventbus.exceptions import EventError
from workflows import conf, durations, telemetry
from workflows.exceptions import (
    INTERRUPTS,
    NonRetriableError,
    RetryAfterError,
    StepUsageError,
    Suspend,
    describe,
    error_record,
)
from workflows.execution import Execution, StepKindBase, sized_json
from workflows.models import RunStatus, StepKind, StepResult, StepStatus


def run_body(
    ex: Execution,
    step_id: str,
    key: str,
    position: int,
    stored: StepResult | None,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run a step's function (unless its memo has the outcome) and record the outcome.

    Returns the JSON result; a failure is retried (the run suspends until the backoff
    ends) up to the workflow's ``retries``, after which :class:`StepError` is raised.
    Used by ``step.run`` and by each branch of ``step.parallel``.
    """
    if stored is not None:
        if stored.status == StepStatus.COMPLETED:
            return ex.output_of(stored)
        if stored.status == StepStatus.FAILED:
            raise ex.step_error(stored)
    # Each execution lost with its worker in this step (killed, crashed, out of memory)
    # was a try: a step that kills its process every time must not run forever.
    lost = ex.lost
    attempt = (stored.attempt if stored is not None else 0) + lost
    if lost and attempt > ex.workflow.retries:
        row = stored or ex.new_memo(step_id, key, position, StepKind.RUN)
        row.status, row.attempt = StepStatus.FAILED, attempt - 1
        row.error = error_record(
            "WorkerLost",
            f"the worker died {lost} {'time' if lost == 1 else 'times'} while executing step "
            f"{step_id!r} (killed, crashed, out of memory, or blocked so long it could not "
            "renew its lease); no try is left",
        )
        row.wake_at, row.finished_at = None, timezone.now()
        ex.save(row)
        raise ex.step_error(row)
    if lost:
        ex.logger.warning(
            "step %r: %d execution(s) lost with their worker; this is try %d of %d",
            step_id,
            lost,
            attempt + 1,
            ex.workflow.retries + 1,
        )
    # The step's span (OpenTelemetry, if installed) is current while its function runs,
    # so the function's own spans are its children; it ends once the outcome is stored.
    with telemetry.step_span(step_id, StepKind.RUN, attempt) as span:
        started = timezone.now()
        failure: BaseException | None = None
        with ex.running(step_id, attempt):
            try:
                value = fn(*args, **kwargs)
            except INTERRUPTS:
                raise
            except (WorkerShutdown, WorkerTerminate):
                raise  # the worker is stopping (solo and thread pools run tasks in its thread)
            except BaseException as exc:
                # SystemExit from a CLI entry point, KeyboardInterrupt, a custom BaseException:
                # a failure of this step like any other, not the end of the worker process.
                failure = exc
        output, size = None, 0
        if failure is None:
            try:
                output, size = sized_json(value, f"the result of step {step_id!r}")
            except ValueError as exc:
                failure = NonRetriableError(
                    f"step {step_id!r} returned a value that is not JSON-serialisable: {exc}"
                )
        cap = conf.get().MAX_RUN_OUTPUT_BYTES
        if failure is None and ex.output_bytes + size > cap:
            failure = NonRetriableError(
                f"step {step_id!r} returned {size} bytes; with the {ex.output_bytes} bytes its "
                f"run has stored, that is over WORKFLOWS['MAX_RUN_OUTPUT_BYTES'] ({cap}): keep "
                "large data elsewhere (a file, object storage) and return a reference to it"
            )
            output, size = None, 0
        row = stored or ex.new_memo(step_id, key, position, StepKind.RUN, started_at=started)
        now = timezone.now()
        if failure is None:
            row.status, row.output, row.error = StepStatus.COMPLETED, output, None
            row.attempt, row.wake_at, row.finished_at = attempt, None, now
            row.output_bytes = size
            ex.save(row, keep_if_cancelled=True, hold=True)
            ex.output_bytes += size
            return output
        telemetry.step_failed(span, failure)
        error = describe(failure)
        retriable = not isinstance(failure, NonRetriableError | StepUsageError)
        if not retriable or attempt >= ex.workflow.retries:
            row.status, row.error, row.attempt = StepStatus.FAILED, error, attempt
            row.wake_at, row.finished_at = None, now
            ex.save(row, keep_if_cancelled=True)
            raise ex.step_error(row)
        at = now + retry_delay(failure, attempt)
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
        ex.save(row, keep_if_cancelled=True, suspend=(RunStatus.QUEUED, at))
        raise Suspend()


def retry_delay(failure: BaseException, attempt: int) -> timedelta:
    """How long to wait before the next try after ``failure`` on try ``attempt``."""
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


_RANGE = "the years 1 to 9999 in UTC (what every database and the admin can show)"


def _in_range(when: datetime, where: str) -> datetime:
    """``when`` in UTC, if it lies within the years 1–9999 there; else a usage error."""
    try:
        utc = when.astimezone(UTC)
    except OverflowError:
        utc = None
    # The outermost day is refused too: a local rendering of it may leave the range.
    if utc is None or not datetime.min.replace(tzinfo=UTC) + timedelta(days=1) <= utc <= (
        datetime.max.replace(tzinfo=UTC) - timedelta(days=1)
    ):
        raise StepUsageError(f"{where}: {when.isoformat()} is not within {_RANGE}")
    return utc


class BasicSteps(StepKindBase):
    """``step.run``, ``step.send_event``, ``step.sleep`` and ``step.sleep_until``."""

    # --- step.run ------------------------------------------------------------------
    def run(self, step_id: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once per run and return its JSON result.

        The result is stored before the workflow goes on; a retry or replay returns the
        stored value. A raising ``fn`` is retried up to the workflow's ``retries`` with
        exponential backoff; after the last try this raises :class:`StepError`.
        """
        key, position, stored = self._ex.begin("run", step_id, StepKind.RUN)
        if not callable(fn):
            raise StepUsageError(
                f"step.run({step_id!r}): the second argument must be a callable, "
                f"got {type(fn).__name__}"
            )
        return run_body(self._ex, step_id, key, position, stored, fn, args, kwargs)

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
        ex = self._ex
        key, position, stored = ex.begin("send_event", step_id, StepKind.SEND_EVENT)
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
        event_ids = [uuid.uuid4() for _ in specs]
        now = timezone.now()
        row = ex.new_memo(
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

        ex.save(row, then=store_events)

    # --- step.sleep / step.sleep_until ------------------------------------------------
    def sleep(self, step_id: str, duration: durations.Duration) -> None:
        """Suspend the run for ``duration``; no worker is held.

        ``duration`` is a ``timedelta``, a number of seconds, or text such as ``"3d"``.
        """
        key, position, stored = self._ex.begin("sleep", step_id, StepKind.SLEEP)
        where = f"step.sleep({step_id!r})"
        try:
            length = durations.parse(duration, where, allow_zero=True)
        except ValueError as exc:
            raise StepUsageError(str(exc)) from None
        try:
            wake = _in_range(timezone.now() + length, where)
        except OverflowError:
            raise StepUsageError(f"{where}: {duration!r} ends after {_RANGE}") from None
        self._sleep(step_id, key, position, stored, wake)

    def sleep_until(self, step_id: str, when: datetime | float) -> None:
        """Suspend the run until ``when`` (an aware ``datetime`` or Unix milliseconds)."""
        key, position, stored = self._ex.begin("sleep_until", step_id, StepKind.SLEEP)
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise StepUsageError(
                    f"step.sleep_until({step_id!r}): the datetime must be aware (with "
                    "tzinfo), e.g. datetime(..., tzinfo=timezone.utc)"
                )
            wake = _in_range(when, f"step.sleep_until({step_id!r})")
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
            ex.suspend(RunStatus.SLEEPING, stored.wake_at)
            raise Suspend()
        row = ex.new_memo(step_id, key, position, StepKind.SLEEP, started_at=now, wake_at=wake)
        if wake <= now:
            row.status, row.finished_at = StepStatus.COMPLETED, now
            ex.save(row)
            return
        row.status = StepStatus.SLEEPING
        ex.save(row, suspend=(RunStatus.SLEEPING, wake))
        raise Suspend()
