"""Paused workflows, and the events that started no run (because of a pause, or of an
admission option: see :mod:`workflows.gates`)."""

from collections.abc import Callable, Iterable
from typing import Any

from django.db import models
from django.utils import timezone


class PausedQuerySet(models.QuerySet):
    """Queries over paused workflows."""

    def among(self, workflow_ids: Iterable[str]) -> Callable[[str, Any], bool] | None:
        """``None`` if none of ``workflow_ids`` is paused anywhere; else a test
        ``paused(workflow_id, workspace_id)``. One indexed query."""
        rows = self.filter(workflow_id__in=list(workflow_ids)).values_list(
            "workflow_id", "workspace_id"
        )
        return paused_test(rows)


def paused_test(rows: Iterable[tuple[str, Any]]) -> Callable[[str, Any], bool] | None:
    """From the (workflow id, workspace id or ``None``) of pauses: ``None`` if there are
    none, else a test ``paused(workflow_id, workspace_id)``."""
    pauses = set(rows)
    if not pauses:
        return None
    return lambda workflow_id, workspace_id: (
        (workflow_id, None) in pauses or (workflow_id, workspace_id) in pauses
    )


class PausedWorkflow(models.Model):
    """A workflow paused in one workspace, or in every workspace (``workspace`` empty).

    While paused, events start no run of it and none of its runs is claimed; a run
    executing when it was paused finishes that execution.
    """

    workflow_id = models.CharField(max_length=200)
    workspace = models.ForeignKey(
        "eventbus.Workspace",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="+",
        help_text="Empty: paused in every workspace.",
    )
    paused_at = models.DateTimeField(default=timezone.now)

    objects = PausedQuerySet.as_manager()

    class Meta:
        verbose_name = "workflow"
        verbose_name_plural = "workflows (pause and resume)"
        permissions = [("pause_workflow", "Can pause and resume workflows")]
        constraints = [
            models.UniqueConstraint(
                fields=["workflow_id", "workspace"], name="workflows_paused_unique"
            ),
            models.UniqueConstraint(
                fields=["workflow_id"],
                condition=models.Q(workspace__isnull=True),
                name="workflows_paused_everywhere_unique",
            ),
        ]

    def __str__(self) -> str:
        where = self.workspace.slug if self.workspace_id else "every workspace"
        return f"{self.workflow_id} paused in {where}"


class SkipReason(models.TextChoices):
    """Why an event started no run of a workflow subscribed to it."""

    PAUSED = "paused", "the workflow was paused"
    RATE_LIMITED = "rate_limited", "over the workflow's rate limit"
    DEBOUNCED = "debounced", "debounced: a later event took its place"
    BATCHED = "batched", "batched into another event's run"
    SINGLETON = "singleton", "skipped: the singleton key had an active run"
    IDEMPOTENT = "idempotent", "a duplicate of an event that already started a run"


class EventSkip(models.Model):
    """An event that started no run of a workflow subscribed to it, and why."""

    event = models.ForeignKey("eventbus.Event", on_delete=models.CASCADE, related_name="skips")
    workflow_id = models.CharField(max_length=200)
    reason = models.CharField(max_length=32, choices=SkipReason.choices)
    detail = models.CharField(
        max_length=300, blank=True, default="", help_text="Which run or event it gave way to."
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.workflow_id}: {self.get_reason_display()}"
