"""Workspaces and events."""

import uuid

from django.db import models
from django.utils import timezone


class Workspace(models.Model):
    """An isolated space: events and runs never cross from one workspace to another."""

    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class EventStatus(models.TextChoices):
    """Where an event is in its life."""

    SCHEDULED = "scheduled", "Scheduled"
    """Stored with a future ``ts``; the dispatcher emits it when due."""
    EMITTED = "emitted", "Emitted"
    """Delivered: a run exists for every workflow subscribed at emission time."""
    CANCELLED = "cancelled", "Cancelled"
    """Was scheduled, but the run whose step sent it was cancelled first; never emitted."""


class EventQuerySet(models.QuerySet):
    """Queries over events."""

    def due(self, now_ms: int) -> "EventQuerySet":
        """Scheduled events whose ``ts`` has come."""
        return self.filter(status=EventStatus.SCHEDULED, ts__lte=now_ms)


class Event(models.Model):
    """A named JSON payload in a workspace; emitting it delivers it to its subscribers."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.PROTECT, related_name="events")
    name = models.CharField(max_length=255)
    data = models.JSONField(default=dict)
    ts = models.BigIntegerField(help_text="Emission time asked for, in Unix milliseconds.")
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=EventStatus.choices, default=EventStatus.EMITTED
    )
    created_at = models.DateTimeField(default=timezone.now)
    emitted_at = models.DateTimeField(null=True, blank=True)
    # Plain ids, not foreign keys: the event bus must not know the app whose steps emit
    # events. No constraint ties them to a row, so readers allow for one that is gone.
    source_run_id = models.UUIDField(
        null=True,
        blank=True,
        db_index=True,
        help_text="The id of the run whose step emitted this event, if any.",
    )
    source_step_id = models.BigIntegerField(
        null=True,
        blank=True,
        db_index=True,
        help_text="The id of the step that emitted this event, if any.",
    )

    objects = EventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        permissions = [("replay_event", "Can replay events")]
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="eventbus_event_unique_idempotency_key",
            )
        ]
        indexes = [
            models.Index(
                fields=["ts"],
                condition=models.Q(status="scheduled"),
                name="eventbus_event_scheduled_ts",
            ),
            models.Index(
                fields=["workspace", "name", "created_at"],
                name="eventbus_event_ws_name",
            ),
            models.Index(
                fields=["workspace", "name", "emitted_at"],
                name="eventbus_event_ws_emitted",
            ),
            models.Index(fields=["name", "created_at"], name="eventbus_event_name"),
            models.Index(fields=["created_at"], name="eventbus_event_created"),
            models.Index(fields=["status", "created_at"], name="eventbus_event_status"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"
