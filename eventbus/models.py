"""Workspaces and events."""

import functools
import uuid
from typing import Any, TypeVar

from django.db import models
from django.utils import timezone

_M = TypeVar("_M", bound=models.Model)


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
    trace_context = models.JSONField(
        null=True,
        blank=True,
        help_text="The W3C trace context current when the event was sent (OpenTelemetry).",
    )
    # The database default lets code of the release before this field insert events
    # while a deploy is under way (docs/versioning.md).
    armed = models.BooleanField(
        default=False,
        db_default=False,
        help_text="A timed broker message will emit this scheduled event at its ts.",
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
                fields=["ts"],
                condition=models.Q(status="scheduled", armed=False),
                name="eventbus_event_unarmed_ts",
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


class EventKey(models.Model):
    """A secret that lets an HTTP client send events into one workspace (``POST /e/<key>``).

    Only the SHA-256 of the key is stored: a key is 256 random bits, so its hash cannot
    be reversed, and a stolen database gives no usable key.
    """

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="event_keys")
    name = models.CharField(max_length=200, blank=True, help_text="A label for people.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefixes = models.JSONField(
        default=list,
        blank=True,
        help_text="Event name prefixes this key may send; empty: any name.",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(
        null=True, blank=True, help_text="Last accepted request (to the minute)."
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "event key"

    def __str__(self) -> str:
        return self.name or f"event key {self.pk}"


class WebhookScheme(models.TextChoices):
    """How a webhook's deliveries are signed."""

    HMAC_SHA256 = "hmac-sha256", "HMAC-SHA256 (GitHub: X-Hub-Signature-256)"
    """``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``."""
    STRIPE = "stripe", "Stripe (Stripe-Signature)"
    """``Stripe-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of "t.body">``, with a tolerance."""


class Webhook(models.Model):
    """An endpoint ``POST /w/<id>`` that turns a third party's signed deliveries into events."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="webhooks")
    name = models.CharField(max_length=200, blank=True, help_text="A label for people.")
    event_name = models.CharField(
        max_length=255, help_text="The name of the event the default transform sends."
    )
    transform = models.CharField(
        max_length=255,
        blank=True,
        help_text="Dotted path to a function (request) -> list of event dicts; blank: default.",
    )
    scheme = models.CharField(max_length=16, choices=WebhookScheme.choices)
    secret = models.CharField(
        max_length=255, help_text="The signing secret the provider shows (kept to verify)."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name or self.event_name


@functools.cache
def _layout(model: type) -> tuple[tuple[str, str, Any], ...]:
    """(attname, name, field) of each concrete field of ``model``, in the order the model
    takes them by position."""
    return tuple((f.attname, f.name, f) for f in model._meta.concrete_fields)


def build(model: type[_M], /, **values: Any) -> _M:
    """An unsaved instance of ``model`` from field values, as ``model(**values)`` makes
    it, but given to the model by position (a third of what the keyword form costs:
    runs, events and memos are made on every send and step). A foreign key may be given
    by its attname (``workspace_id``) or by its name with an instance (``workspace``),
    which is then cached on the row as the keyword form caches it; a field not given
    takes its default."""
    related = []
    args = []
    for attname, name, field in _layout(model):
        if attname in values:
            args.append(values.pop(attname))
        elif name != attname and name in values:
            instance = values.pop(name)
            related.append((name, instance))
            args.append(None if instance is None else getattr(instance, field.target_field.attname))
        else:
            args.append(field.get_default())
    if values:
        raise TypeError(f"{model.__name__} has no field {', '.join(map(repr, values))}")
    row = model(*args)
    for name, instance in related:
        setattr(row, name, instance)
    return row
