"""The pre-deploy check: replay every active run's memos against the code loaded now.

Each run's workflow function runs as a worker would run it, over the run's memos, but
through a :class:`ReadOnlyExecution`: a step that would run its function, record a
memo, suspend the run or open a transaction stops the replay there instead (the run
got that far without a mismatch), and ``ctx.patched`` records no marker. So no step
body runs and nothing is written; on top of that, each batch is read in a transaction
the database itself keeps read-only (PostgreSQL ``transaction_read_only``, SQLite
``query_only``) and rolls back.

Runs are read in batches (keyset-paginated by id, the memos of a batch in one query),
so memory stays bounded whatever the number of active runs.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import DatabaseError, connection, transaction

from eventbus import bus
from workflows import registry
from workflows.context import Context
from workflows.exceptions import NonDeterminismError, UnknownWorkflowError
from workflows.execution import Execution, GuardedAtomic
from workflows.models import ACTIVE_VALUES, StepResult, WorkflowRun

#: Runs read (and replayed) per batch.
BATCH_SIZE = 500


class _Reached(BaseException):
    """The replay reached the run's frontier: the next step would do or record something.

    A ``BaseException``, like the engine's interrupts, so workflow code cannot catch it.
    """


class ReadOnlyExecution(Execution):
    """An :class:`Execution` that replays memos and stops at the first thing it would do."""

    def __init__(self, run: WorkflowRun, workflow: registry.Workflow, memos: Any) -> None:
        super().__init__(run, workflow, token="", memos=memos)

    @contextlib.contextmanager
    def running(self, step_id: str, attempt: int) -> Iterator[None]:
        """A step function would run: stop."""
        raise _Reached()
        yield  # pragma: no cover

    def save(self, row: StepResult, **options: Any) -> None:
        """A memo would be recorded: stop."""
        raise _Reached()

    def suspend(self, status: str, until: datetime | None) -> None:
        """The run would be released to wait: stop."""
        raise _Reached()

    @staticmethod
    def atomic() -> GuardedAtomic:
        """A step would write in a transaction: stop."""
        raise _Reached()

    def record_patch(self, marker: StepResult) -> None:
        """A new run would record the patch's marker here: record nothing, go on."""


@dataclass(frozen=True)
class Finding:
    """A run that would break on the code loaded now, and where."""

    run_id: Any
    workflow_id: str
    step_id: str
    reason: str


@dataclass(frozen=True)
class Progress:
    """How far the check got: runs checked so far, of ``total`` (counted at the start)."""

    checked: int
    total: int


def check(
    workflow_id: str | None = None, *, batch_size: int = BATCH_SIZE
) -> Iterator[Finding | Progress]:
    """Replay every active run (of ``workflow_id``, if given); yield what would break.

    Yields a :class:`Finding` per run that would hit a non-determinism (or raise for
    another reason, or whose workflow is not registered here), and a :class:`Progress`
    after each batch.
    """
    runs = WorkflowRun.objects.filter(status__in=ACTIVE_VALUES)
    if workflow_id:
        runs = runs.filter(workflow_id=workflow_id)
    total = runs.count()
    checked = 0
    after = None
    while True:
        page = runs.order_by("pk")
        if after is not None:
            page = page.filter(pk__gt=after)
        with _read_only():
            batch = list(page.select_related("event", "workspace")[:batch_size])
            if not batch:
                return
            findings = list(_check_batch(batch))
        yield from findings
        checked += len(batch)
        after = batch[-1].pk
        yield Progress(checked, max(total, checked))


def _check_batch(batch: list[WorkflowRun]) -> Iterator[Finding]:
    owners = {run.pk for run in batch} | {run.parent_id for run in batch if run.is_branch}
    memos: dict[Any, list[StepResult]] = {}
    for row in StepResult.objects.filter(run_id__in=owners):
        memos.setdefault(row.run_id, []).append(row)
    for run in batch:
        owned = memos.get(run.pk, [])
        if run.is_branch:
            owned = [*memos.get(run.parent_id, []), *owned]
        finding = replay(run, owned)
        if finding is not None:
            yield finding


def replay(run: WorkflowRun, memos: list[StepResult]) -> Finding | None:
    """Replay ``run`` over ``memos`` on the code loaded now; what would break, or ``None``."""
    try:
        wf = registry.get(run.workflow_id)
    except UnknownWorkflowError:
        return Finding(run.pk, run.workflow_id, "", "its workflow is not registered")
    execution = ReadOnlyExecution(run, wf, memos)
    failure: BaseException | None = None
    # A savepoint per run: a write the database refuses leaves the batch usable.
    with transaction.atomic(), bus.bound_to(run.workspace):
        try:
            wf.fn(Context(execution))
        except _Reached:
            pass
        except Exception as exc:
            failure = exc
        transaction.set_rollback(True)
    failure = execution.fatal or failure
    if failure is None:
        return None
    step_id = getattr(failure, "step_id", "") or ""
    if isinstance(failure, NonDeterminismError):
        reason = f"non-determinism: {failure}"
    elif isinstance(failure, DatabaseError):
        reason = f"the workflow writes to the database outside a step ({failure})"
    else:
        reason = f"the workflow raises {type(failure).__name__}: {failure}"
    return Finding(run.pk, run.workflow_id, step_id, reason)


@contextlib.contextmanager
def _read_only() -> Iterator[None]:
    """A transaction the database refuses to write in, rolled back at the end."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL transaction_read_only = on")
        elif connection.vendor == "sqlite":
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA query_only = ON")
        try:
            yield
        finally:
            if connection.vendor == "sqlite":
                with connection.cursor() as cursor:
                    cursor.execute("PRAGMA query_only = OFF")
            transaction.set_rollback(True)
