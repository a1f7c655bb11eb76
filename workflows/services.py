"""Operations on runs and events, shared by the admin, the management commands and tests.

No logic lives in an admin class or a command: both parse their input, call a function
here and report what it returned. Bad arguments raise a
:class:`~workflows.exceptions.ConsoleError` (a ``ValueError``) with a message that
names what was wrong and what is allowed.

Replay semantics: a replay is a *new* run linked to the original by ``replay_of``, with
the same workflow, workspace and trigger event. The original is never changed. Replaying
a run that is still active is allowed: both then execute independently (the replay does
not wait for, or stop, the original; cancel the original first if that is wanted).
"""

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from eventbus.models import Event, EventStatus
from workflows import deploycheck, doorbell, lifecycle, registry, runstore
from workflows.exceptions import (
    ConsoleError,
    MalformedIdError,
    NotReplayableError,
    NotResumableError,
    UnknownEventError,
    UnknownRunError,
    UnknownStepError,
    UnknownWorkflowError,
    WrongWorkspaceError,
)
from workflows.models import (
    RunStatus,
    StepResult,
    StepStatus,
    WorkflowRun,
)

#: How many valid step ids an ``UnknownStepError`` lists before it abbreviates.
_MAX_LISTED_STEPS = 30


def parse_id(value: Any, what: str = "run") -> uuid.UUID:
    """``value`` as a UUID, or :class:`MalformedIdError` naming what was expected."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value).strip())
    except (ValueError, AttributeError):
        raise MalformedIdError(
            f"{value!r} is not a valid {what} id: expected a UUID such as "
            "'1b4e28ba-2fa1-11d2-883f-0016d3cca427'"
        ) from None


def get_run(run_id: Any, *, workspace: str | None = None) -> WorkflowRun:
    """The run ``run_id``; with ``workspace``, it must belong to that workspace."""
    pk = parse_id(run_id, "run")
    try:
        run = WorkflowRun.objects.select_related("workspace", "event").get(pk=pk)
    except WorkflowRun.DoesNotExist:
        raise UnknownRunError(f"no run has the id {pk}") from None
    _check_workspace(run.workspace.slug, workspace, f"run {pk}")
    return run


def get_event(event_id: Any, *, workspace: str | None = None) -> Event:
    """The event ``event_id``; with ``workspace``, it must belong to that workspace."""
    pk = parse_id(event_id, "event")
    try:
        event = Event.objects.select_related("workspace").get(pk=pk)
    except Event.DoesNotExist:
        raise UnknownEventError(f"no event has the id {pk}") from None
    _check_workspace(event.workspace.slug, workspace, f"event {pk}")
    return event


def _check_workspace(actual: str, expected: str | None, what: str) -> None:
    if expected is not None and actual != expected:
        raise WrongWorkspaceError(
            f"{what} belongs to workspace {actual!r}, not {expected!r}: "
            "events and runs never cross workspaces"
        )


def check_replayable_workflow(workflow_id: str) -> None:
    """Refuse (:class:`NotReplayableError`) a workflow id this process has not registered."""
    _check_registered(workflow_id)


def _check_registered(workflow_id: str) -> None:
    try:
        registry.get(workflow_id)
    except UnknownWorkflowError:
        raise NotReplayableError(
            f"workflow {workflow_id!r} is not registered in this process, so a replay "
            "could never run; deploy the code that defines it first"
        ) from None


def _start_replays(
    event: Event, replays: Iterable[tuple[registry.Workflow, WorkflowRun | None]]
) -> list[WorkflowRun]:
    """Start a new run of each workflow for ``event``, as a replay of the run given.

    With no run to replay (a workflow subscribed since the event), the run is the
    event's first run of that workflow, not a replay.
    """
    return lifecycle.start(
        (
            lifecycle.new_run(event, wf, replay_of=original, is_replay=original is not None),
            wf,
        )
        for wf, original in replays
    )


def steps_before(run: WorkflowRun, from_step: str) -> tuple[StepResult, list[StepResult]]:
    """The step ``from_step`` of ``run`` and the completed memos recorded before it.

    ``from_step`` is a step id (its first use in the run) or a memo key (to pick a
    particular repeat of a step in a loop). Raises :class:`UnknownStepError`, listing the
    valid step ids, when the run has no such step.
    """
    steps = list(StepResult.objects.filter(run=run).order_by("position"))
    target = next((s for s in steps if s.step_id == from_step), None)
    if target is None:
        target = next((s for s in steps if s.key == from_step), None)
    if target is None:
        ids = list(dict.fromkeys(s.step_id for s in steps))
        if not ids:
            raise UnknownStepError(
                f"run {run.pk} recorded no steps, so there is no step {from_step!r} to "
                "replay from; replay the whole run instead"
            )
        listed = ", ".join(repr(i) for i in ids[:_MAX_LISTED_STEPS])
        more = f" (and {len(ids) - _MAX_LISTED_STEPS} more)" if len(ids) > _MAX_LISTED_STEPS else ""
        raise UnknownStepError(
            f"run {run.pk} has no step {from_step!r}; its steps are: {listed}{more}"
        )
    kept = [s for s in steps if s.position < target.position and s.status == StepStatus.COMPLETED]
    return target, kept


def replay_run(
    run_id: Any, from_step: str | None = None, *, workspace: str | None = None
) -> WorkflowRun:
    """Start a new run of the same workflow and trigger event as ``run_id``; return it.

    With ``from_step``, the completed memos recorded before that step (in the original's
    order) are copied into the new run, so that work is not done again; the step and
    everything after it re-run. The original is never changed. The new run is rung once
    the transaction commits.
    """
    original = get_run(run_id, workspace=workspace)
    if original.is_branch:
        raise NotReplayableError(
            f"run {original.pk} is branch {original.branch_index} of a step.parallel of run "
            f"{original.parent_id}: replay that run instead (from the parallel step to re-run "
            "its branches)"
        )
    _check_registered(original.workflow_id)
    kept: list[StepResult] = []
    if from_step is not None:
        _, kept = steps_before(original, from_step)
    with transaction.atomic():
        (run,) = _start_replays(original.event, [(registry.get(original.workflow_id), original)])
        now = run.created_at
        # Copies took no time in the new run: they sit at its start on the timeline.
        StepResult.objects.bulk_create(
            [
                StepResult(
                    run=run,
                    step_id=s.step_id,
                    key=s.key,
                    position=s.position,
                    kind=s.kind,
                    status=StepStatus.COMPLETED,
                    output=s.output,
                    attempt=0,
                    started_at=now,
                    finished_at=now,
                )
                for s in kept
            ],
            batch_size=500,
        )
    return run


def replay_event(event_id: Any, *, workspace: str | None = None) -> list[WorkflowRun]:
    """Start one new run per workflow subscribed to the event *now*; return them.

    Each new run's ``replay_of`` is the event's original run of that workflow, if there
    is one. A workflow subscribed since the event was emitted gets its first run.
    """
    event = get_event(event_id, workspace=workspace)
    if event.status != EventStatus.EMITTED:
        raise NotReplayableError(
            f"event {event.pk} is still scheduled (ts={event.ts}); it has triggered "
            "nothing yet, so there is nothing to replay"
        )
    workflows = registry.subscribers(event.name)
    if not workflows:
        raise NotReplayableError(
            f"no workflow is subscribed to {event.name!r} now, so a replay would start nothing"
        )
    originals = {
        run.workflow_id: run
        for run in WorkflowRun.objects.filter(
            event=event, is_replay=False, branch_index__isnull=True
        )
    }
    with transaction.atomic():
        runs = _start_replays(event, [(wf, originals.get(wf.id)) for wf in workflows])
    return runs


def cancel_run(run_id: Any, *, workspace: str | None = None) -> bool:
    """Cancel an active run; ``False`` if it had already finished."""
    run = get_run(run_id, workspace=workspace)
    return lifecycle.cancel(run.pk, reason="cancelled from the console")


def resume_run(run_id: Any, *, workspace: str | None = None) -> WorkflowRun:
    """Queue a paused run again, to execute on the code deployed now; return it.

    A run that still does not fit the code is paused again at its next execution.
    A run that is not paused is a :class:`NotResumableError`, and so is one whose
    workflow is not registered in this process.
    """
    run = get_run(run_id, workspace=workspace)
    if run.status != RunStatus.PAUSED:
        raise NotResumableError(
            f"run {run.pk} is {run.status}, not paused: only a paused run can be resumed "
            "(replay_run starts a new run of any run)"
        )
    try:
        registry.get(run.workflow_id)
    except UnknownWorkflowError:
        raise NotResumableError(
            f"workflow {run.workflow_id!r} is not registered in this process; deploy the "
            "code that defines it, then resume the run"
        ) from None
    with transaction.atomic():
        if not runstore.resume(run.pk):
            run.refresh_from_db(fields=["status"])
            raise NotResumableError(
                f"run {run.pk} is {run.status}, not paused: only a paused run can be resumed"
            )
        # Read it back before the bell rings: a worker may claim it the moment this
        # commits, and the caller is told what it resumed, a queued run.
        run.refresh_from_db()
        doorbell.ring_on_commit([run.pk])
    return run


def check_workflows(
    workflow: str | None = None, *, batch_size: int = deploycheck.BATCH_SIZE
) -> Iterator[deploycheck.Finding | deploycheck.Progress]:
    """Replay every active run against the code loaded now; yield what would break.

    See :mod:`workflows.deploycheck`: no step body runs and nothing is written. Yields a
    ``Finding`` (run id, workflow id, step id, reason) per run that would break and a
    ``Progress`` after each batch. ``workflow`` limits the check to one workflow id.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConsoleError(f"batch_size must be a whole number of 1 or more, got {batch_size!r}")
    return deploycheck.check(workflow, batch_size=batch_size)


# --- selecting runs ------------------------------------------------------------------


def parse_status(value: str, allowed: Iterable[str] | None = None) -> str:
    """``value`` if it is a run status (among ``allowed``), else a :class:`ConsoleError`."""
    allowed = list(allowed if allowed is not None else RunStatus.values)
    if value not in allowed:
        raise ConsoleError(f"unknown status {value!r}; use one of: {', '.join(allowed)}")
    return value


def parse_when(value: str, what: str = "--since") -> datetime:
    """An ISO date or datetime (naive means the current time zone) as an aware datetime."""
    text = str(value).strip()
    try:
        parsed: datetime | date | None = parse_datetime(text) or parse_date(text)
    except ValueError:
        parsed = None
    if parsed is None:
        raise ConsoleError(
            f"{what} {value!r} is not an ISO date or datetime; use e.g. 2025-01-31 or "
            "2025-01-31T14:00:00+00:00"
        )
    if not isinstance(parsed, datetime):
        parsed = datetime.combine(parsed, time.min)
    try:
        if timezone.is_naive(parsed):
            parsed = timezone.make_aware(parsed)
        # In UTC, as the database stores it: PostgreSQL refuses offsets beyond ±15:59,
        # and an offset can carry a date past year 1 or 9999.
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ConsoleError(
            f"{what} {value!r} is out of range: the date must fall between the years 1 and "
            "9999 in UTC"
        ) from None


def select_runs(
    *,
    workflow: str | None = None,
    status: str | None = None,
    workspace: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    version: str | None = None,
):
    """Runs matching every given filter, newest first (each filter is index-backed;
    ``version``, the workflow's version label, narrows the rows another filter found)."""
    runs = WorkflowRun.objects.all()
    if workflow:
        runs = runs.filter(workflow_id=workflow)
    if version is not None:
        runs = runs.filter(version=version)
    if status:
        runs = runs.filter(status=parse_status(status))
    if workspace:
        runs = runs.filter(workspace__slug=workspace)
    if since is not None:
        runs = runs.filter(created_at__gte=since)
    if until is not None:
        runs = runs.filter(created_at__lt=until)
    return runs.order_by("-created_at")


@dataclass
class ReplayOutcome:
    """One run of a bulk replay: the new run, or why it was not replayed."""

    original_id: uuid.UUID
    replay: WorkflowRun | None = None
    error: str = ""


def replay_many(runs, *, limit: int | None = None) -> Iterator[ReplayOutcome]:
    """Replay each run of the queryset ``runs``, one transaction each; yield outcomes.

    Only ids are read up front (never whole rows), so a large selection does not fill
    memory; one failing replay does not stop the others.
    """
    ids = runs.values_list("pk", flat=True)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConsoleError(f"limit must be a whole number of 0 or more, got {limit!r}")
        ids = ids[:limit]
    for pk in ids.iterator(chunk_size=1000):
        try:
            yield ReplayOutcome(pk, replay=replay_run(pk))
        except ConsoleError as exc:
            yield ReplayOutcome(pk, error=str(exc))
