"""The step API: ``ctx.step.run``, ``send_event``, ``sleep`` and ``sleep_until``.

The steps that wait (``wait_for_event``, ``invoke``, ``parallel``) live in
:mod:`workflows.waiting` and are part of the same ``Step`` class.

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

from django.db import DatabaseError
from django.utils import timezone

from eventbus import bus, validation
from eventbus.exceptions import EventError
from workflows import (
    conf,
    doorbell,
    errors,
    leases,
    memo,
)
from workflows.exceptions import (
    NestedStepError,
    NonDeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepError,
    StepUsageError,
)
from workflows.interrupts import BranchDone, EngineInterrupt, GuardedAtomic, Suspend
from workflows.models import (
    RunStatus,
    StepKind,
    StepResult,
    StepStatus,
)
from workflows.waiting import WaitingSteps

if TYPE_CHECKING:
    from workflows.engine import Execution

__all__ = ["BranchDone", "EngineInterrupt", "GuardedAtomic", "Step", "Suspend", "to_json"]


class Step(WaitingSteps):
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
