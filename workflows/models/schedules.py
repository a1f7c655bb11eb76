"""Schedules: cron slots that start runs, declared in code or kept in the database."""

from datetime import datetime

from django.db import models
from django.utils import timezone


class ScheduleSource(models.TextChoices):
    """Where a :class:`Schedule` comes from."""

    CODE = "code", "@workflow(cron=…)"
    """Declared in code; kept in step with it at start-up (its id is ``workflow:<id>``)."""
    DATABASE = "database", "workflows.schedules"
    """Created with :func:`workflows.schedules.create`; editable without a deploy."""


class ScheduleQuerySet(models.QuerySet):
    """Queries over schedules."""

    def due(self, now: datetime) -> "ScheduleQuerySet":
        """Schedules whose next slot has come (index ``workflows_schedule_due``)."""
        return self.filter(next_fire_at__lte=now)


class Schedule(models.Model):
    """A cron schedule of a workflow: each slot starts one run.

    ``next_fire_at`` is the next slot (``None`` while paused); the dispatcher takes due
    rows, moves ``next_fire_at`` on with a conditional update and stores the slot's
    ``workflows/cron`` event under the idempotency key ``cron:<schedule_id>:<slot ms>``,
    so a slot starts one run however many dispatchers run.
    """

    schedule_id = models.CharField(max_length=200, unique=True)
    workflow_id = models.CharField(max_length=200)
    cron = models.TextField(help_text="Cron entries, one per line, each as declared.")
    data = models.JSONField(default=dict, blank=True, help_text="Sent as the runs' payload.")
    workspace = models.ForeignKey(
        "eventbus.Workspace", on_delete=models.PROTECT, related_name="schedules"
    )
    source = models.CharField(
        max_length=16, choices=ScheduleSource.choices, default=ScheduleSource.DATABASE
    )
    paused = models.BooleanField(default=False)
    next_fire_at = models.DateTimeField(null=True, blank=True, help_text="The next slot.")
    last_fired_at = models.DateTimeField(
        null=True, blank=True, help_text="The slot of the latest run it started."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ScheduleQuerySet.as_manager()

    class Meta:
        ordering = ["schedule_id"]
        permissions = [
            ("pause_schedule", "Can pause schedules"),
            ("resume_schedule", "Can resume schedules"),
            ("trigger_schedule", "Can trigger schedules"),
        ]
        indexes = [
            models.Index(
                fields=["next_fire_at"],
                condition=models.Q(next_fire_at__isnull=False),
                name="workflows_schedule_due",
            ),
        ]

    def __str__(self) -> str:
        return self.schedule_id

    @property
    def entries(self) -> list[str]:
        """The cron entries, in declaration order."""
        return [line for line in self.cron.split("\n") if line]
