"""Typed settings of the event bus, read from ``settings.EVENTBUS`` when used."""

from dataclasses import dataclass, fields

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class EventbusSettings:
    """Limits and defaults of the event bus; override any of them in ``EVENTBUS``."""

    #: Largest encoded ``data`` of one event, in bytes.
    MAX_PAYLOAD_BYTES: int = 512 * 1024
    #: Longest event name (and idempotency key), in characters.
    MAX_NAME_LENGTH: int = 255
    #: Deepest nesting of lists and objects in ``data``.
    MAX_DEPTH: int = 64
    #: Most events in one ``send_batch`` call or one ``step.send_event`` batch.
    MAX_BATCH_SIZE: int = 10_000
    #: Slug of the workspace used when none is given.
    DEFAULT_WORKSPACE: str = "default"
    #: Largest body of one request to the HTTP event API or a webhook, in bytes.
    MAX_REQUEST_BYTES: int = 10 * 1024 * 1024
    #: Most events in one request to the HTTP event API (or from one webhook delivery).
    MAX_REQUEST_EVENTS: int = 5_000
    #: How old a Stripe webhook's signed timestamp may be, in seconds.
    WEBHOOK_TOLERANCE_SECONDS: int = 300


def get() -> EventbusSettings:
    """Return the current settings (read on every call, so tests may override them)."""
    overrides = getattr(django_settings, "EVENTBUS", {}) or {}
    known = {f.name for f in fields(EventbusSettings)}
    unknown = set(overrides) - known
    if unknown:
        raise ImproperlyConfigured(
            f"EVENTBUS has unknown keys {sorted(unknown)}; allowed: {sorted(known)}"
        )
    return EventbusSettings(**overrides)
