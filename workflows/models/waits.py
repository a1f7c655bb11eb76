"""What runs wait for: events, child runs, branches, cancellations."""

from django.db import models
from django.utils import timezone

from workflows.models.runs import StepResult, WorkflowRun


class WaitKind(models.TextChoices):
    """What a :class:`Wait` waits for."""

    EVENT = "event", "event"
    """``step.wait_for_event``: an event with a name and, optionally, a match."""
    INVOKE = "invoke", "invoke"
    """``step.invoke``: the end of a child run."""
    PARALLEL = "parallel", "parallel"
    """``step.parallel``: the end of one branch run."""
    CANCEL = "cancel", "cancel"
    """``@workflow(cancel_on=…)``: an event that cancels the run."""


class Wait(models.Model):
    """Something a run waits for; deleted when it arrives, times out or the run ends.

    Event waits are found, when an event is emitted, by (workspace, event name, match
    hash): the hash of the incoming event's value at ``match_path`` that the wait
    expects. Waits without an indexable condition have an empty hash and are checked one
    by one, so only those scale with the number of waiting runs.
    """

    run = models.ForeignKey(WorkflowRun, on_delete=models.CASCADE, related_name="waits")
    step = models.ForeignKey(
        StepResult, on_delete=models.CASCADE, null=True, blank=True, related_name="waits"
    )
    kind = models.CharField(max_length=16, choices=WaitKind.choices)
    workspace = models.ForeignKey("eventbus.Workspace", on_delete=models.CASCADE, related_name="+")
    event_name = models.CharField(max_length=255, blank=True, default="")
    match_path = models.CharField(max_length=255, blank=True, default="")
    match_hash = models.CharField(max_length=40, blank=True, default="")
    expression = models.TextField(blank=True, default="", help_text="CEL, checked on arrival.")
    match = models.CharField(max_length=255, blank=True, default="")
    child_run = models.ForeignKey(
        WorkflowRun,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="awaited_by",
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(
                fields=["workspace", "event_name", "match_hash", "created_at"],
                name="workflows_wait_event",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} wait of run {self.run_id}"


class WaitPath(models.Model):
    """The event fields that waits on an event name match on (a small, stable set).

    When an event is emitted, its values at these paths are hashed to find the waits it
    satisfies, without reading every wait on that name.
    """

    workspace = models.ForeignKey("eventbus.Workspace", on_delete=models.CASCADE, related_name="+")
    event_name = models.CharField(max_length=255)
    match_path = models.CharField(max_length=255)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "event_name", "match_path"], name="workflows_waitpath_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.event_name} by {self.match_path}"
