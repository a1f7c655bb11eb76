"""The state admission keeps between events: one row per key of a gate, the members of
each batch, and the idempotency values seen (see :mod:`workflows.gates`)."""

import uuid
from typing import Any

from django.db import models
from django.utils import timezone


class GateKind(models.TextChoices):
    """Which option a :class:`GateState` row belongs to."""

    RATE_LIMIT = "rate_limit", "rate limit"
    """``stamps`` holds the creation times (Unix ms) of the runs in the window."""
    SINGLETON = "singleton", "singleton"
    """``run_id`` is the last run the key let in (active or not)."""
    DEBOUNCE = "debounce", "debounce"
    """``event`` is the latest event; the run starts at ``due_at``."""
    BATCH = "batch", "batch"
    """``batch_id`` is the open batch, ``event`` its first event, ``size`` its members."""


class GateStateQuerySet(models.QuerySet):
    """Queries over gate states."""

    def due(self, now: Any) -> "GateStateQuerySet":
        """Debounces and batches whose timer has come (index ``workflows_gate_due``)."""
        return self.filter(due_at__lte=now)


class GateState(models.Model):
    """One key of one gate of one workflow in one workspace.

    Every decision about the key locks this row first (an upsert, so a new key's row is
    created and locked in one statement), which is what makes the decisions exact under
    concurrent senders and dispatchers. Rows stay when idle, as throttle rows do.
    """

    scope = models.CharField(max_length=500, primary_key=True)
    kind = models.CharField(max_length=16, choices=GateKind.choices)
    workflow_id = models.CharField(max_length=200)
    workspace = models.ForeignKey(
        "eventbus.Workspace", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    stamps = models.JSONField(default=list, blank=True)
    run_id = models.UUIDField(null=True, blank=True)
    event = models.ForeignKey(
        "eventbus.Event", on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    batch_id = models.UUIDField(null=True, blank=True)
    size = models.PositiveIntegerField(default=0)
    first_at = models.DateTimeField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)

    objects = GateStateQuerySet.as_manager()

    class Meta:
        verbose_name = "admission key"
        indexes = [
            models.Index(
                fields=["due_at"],
                condition=models.Q(due_at__isnull=False),
                name="workflows_gate_due",
            )
        ]

    def __str__(self) -> str:
        return self.scope


class BatchEventQuerySet(models.QuerySet):
    """Queries over batch members."""

    def events_of(self, event_id: Any, workflow_id: str) -> list[Any]:
        """The events of the batch whose member ``event_id`` is, in arrival order."""
        batch = self.filter(event_id=event_id, workflow_id=workflow_id).values("batch_id")[:1]
        return [
            member.event
            for member in self.filter(batch_id__in=batch)
            .select_related("event")
            .order_by("position")
        ]


class BatchEvent(models.Model):
    """One event of one batch of a ``batch_events`` workflow, stored when it arrives.

    A batch run's trigger is its first member; its ``ctx.events`` are read from here, so
    a resumed or replayed run sees the same events. An event is in at most one batch of
    a workflow (a unique constraint).
    """

    batch_id = models.UUIDField(default=uuid.uuid4)
    workflow_id = models.CharField(max_length=200)
    event = models.ForeignKey(
        "eventbus.Event",
        on_delete=models.CASCADE,
        related_name="batch_memberships",
        db_index=False,  # the unique (event, workflow_id) index leads with it
    )
    position = models.PositiveIntegerField()

    objects = BatchEventQuerySet.as_manager()

    class Meta:
        verbose_name = "batched event"
        constraints = [
            models.UniqueConstraint(
                fields=["batch_id", "position"], name="workflows_batch_position"
            ),
            models.UniqueConstraint(
                fields=["event", "workflow_id"], name="workflows_batch_event_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_id} batch {self.batch_id} #{self.position}"


class IdempotencyRecord(models.Model):
    """An ``idempotency`` value that started a run of a workflow in a workspace.

    Another event with the same value creates no run until ``expires_at``; the
    expiry is a comparison on the row found by the unique index, and
    ``workflows_idempotency_expiry`` lets a purge find expired rows without a scan.
    """

    workflow_id = models.CharField(max_length=200)
    workspace = models.ForeignKey(
        "eventbus.Workspace", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    key = models.CharField(max_length=255)
    event = models.ForeignKey("eventbus.Event", on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        verbose_name = "idempotency key"
        constraints = [
            models.UniqueConstraint(
                fields=["workflow_id", "workspace", "key"], name="workflows_idempotency_once"
            )
        ]
        indexes = [models.Index(fields=["expires_at"], name="workflows_idempotency_expiry")]

    def __str__(self) -> str:
        return f"{self.workflow_id}: {self.key}"
