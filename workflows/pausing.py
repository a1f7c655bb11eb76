"""Stopping a runaway workflow: pausing and resuming it, and cancelling its runs in bulk.

While a workflow is paused (in one workspace, or in all), events start no run of it (the
skip is recorded on the event) and none of its active runs is claimed; they keep their
status. A run executing at that moment finishes that execution (it completes, fails or
suspends). After :func:`resume_workflow` its runs move on, rung at once.

Like :mod:`workflows.services`, these are shared by the admin, the commands and tests,
and raise :class:`~workflows.exceptions.ConsoleError` for arguments they cannot act on.
"""

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from eventbus.models import Workspace
from workflows import lifecycle, registry, services
from workflows.exceptions import ConsoleError, UnknownWorkflowError
from workflows.models import ACTIVE_VALUES, PausedWorkflow, WorkflowRun

#: Runs cancelled per transaction batch by :func:`cancel_runs`.
CANCEL_BATCH = 500


def _workflow(workflow_id: Any) -> str:
    try:
        return registry.get(workflow_id).id
    except UnknownWorkflowError as exc:
        raise ConsoleError(str(exc)) from None


def _workspace(slug: str | None) -> Workspace | None:
    if slug is None:
        return None
    try:
        return Workspace.objects.get(slug=slug)
    except Workspace.DoesNotExist:
        raise ConsoleError(f"unknown workspace {slug!r}") from None


def is_paused(workflow_id: str, workspace: Workspace | None = None) -> bool:
    """Whether ``workflow_id`` is paused everywhere, or (with ``workspace``) there."""
    where = Q(workspace__isnull=True)
    if workspace is not None:
        where |= Q(workspace=workspace)
    return PausedWorkflow.objects.filter(where, workflow_id=workflow_id).exists()


def pause_workflow(workflow_id: str, *, workspace: str | None = None) -> bool:
    """Pause a workflow in ``workspace`` (``None``: in every workspace).

    Returns ``False`` if it was paused there already.
    """
    wf_id = _workflow(workflow_id)
    space = _workspace(workspace)
    if is_paused(wf_id, space):
        return False
    try:
        with transaction.atomic():
            PausedWorkflow.objects.create(workflow_id=wf_id, workspace=space)
    except IntegrityError:
        return False  # paused by someone else meanwhile
    return True


def resume_workflow(workflow_id: str, *, workspace: str | None = None) -> int:
    """Resume a paused workflow (``workspace=None``: wherever it is paused).

    Its runs that were held back are rung at once; returns how many.
    """
    wf_id = _workflow(workflow_id)
    space = _workspace(workspace)
    pauses = PausedWorkflow.objects.filter(workflow_id=wf_id)
    if space is not None:
        if pauses.filter(workspace__isnull=True).exists():
            raise ConsoleError(
                f"workflow {wf_id!r} is paused in every workspace: resume it everywhere "
                "(without a workspace), then pause it again where it should stay paused"
            )
        pauses = pauses.filter(workspace=space)
    if not pauses.exists():
        where = f" in workspace {space.slug!r}" if space else ""
        raise ConsoleError(f"workflow {wf_id!r} is not paused{where}")
    now = timezone.now()
    with transaction.atomic():
        pauses.delete()
        held = WorkflowRun.objects.runnable(now).filter(workflow_id=wf_id)
        if space is not None:
            held = held.filter(workspace=space)
        held_back = held.count()
        # The dispatcher rings due runs at its next pass (a fraction of a second).
        held.filter(due_at__gt=now).update(due_at=now)
    return held_back


def cancel_runs(
    workflow_id: str,
    *,
    statuses: Iterable[str] | None = None,
    workspace: str | None = None,
    event_name: str | None = None,
    created_after: datetime | None = None,
    dry_run: bool = False,
) -> Iterator[int]:
    """Cancel every active run of ``workflow_id`` that matches, in batches, unbounded.

    Yields the running total after each batch (with ``dry_run``, once: how many would
    be cancelled). Each run is cancelled as :func:`workflows.cancel_run` would.
    """
    runs = WorkflowRun.objects.active().filter(workflow_id=_workflow(workflow_id))
    if statuses:
        runs = runs.filter(status__in=[services.parse_status(s, ACTIVE_VALUES) for s in statuses])
    if workspace is not None:
        runs = runs.filter(workspace=_workspace(workspace))
    if event_name is not None:
        runs = runs.filter(event__name=event_name)
    if created_after is not None:
        runs = runs.filter(created_at__gt=created_after)
    if dry_run:
        yield runs.count()
        return
    total = 0
    while True:
        batch = list(runs.order_by("created_at").values_list("pk", flat=True)[:CANCEL_BATCH])
        if not batch:
            return
        for run_id in batch:
            total += lifecycle.cancel(run_id, reason="cancelled in bulk from the console")
        yield total
