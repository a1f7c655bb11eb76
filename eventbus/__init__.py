"""The event bus: events stored in the ORM, delivered to every subscribed workflow.

Public names: :func:`send`, :func:`send_batch`, :class:`EventError`, and
:func:`create_event_key` for the HTTP event API (``eventbus.urls``).
"""

from typing import Any

from eventbus.exceptions import EventError

__all__ = ["EventError", "create_event_key", "send", "send_batch"]


def send(
    name: str,
    data: dict[str, Any] | None = None,
    *,
    ts: float | None = None,
    id: str | None = None,
    workspace: str | None = None,
) -> str:
    """Store one event and deliver it to every workflow subscribed to ``name``.

    ``ts`` is the emission time in Unix milliseconds (``None`` or the past: now; the
    future: deferred until then). ``id`` is an idempotency key within the workspace.
    Returns the event's id. Raises :class:`EventError` before storing anything when the
    input is invalid.
    """
    from eventbus import bus  # not at import time: it imports models (app registry)

    return bus.send(name, data, ts=ts, id=id, workspace=workspace)


def send_batch(events: list[dict[str, Any]], *, workspace: str | None = None) -> list[str]:
    """Store several events at once (all or none) and deliver them; returns their ids.

    Each item is a dict with ``name`` and optional ``data``, ``ts`` and ``id``.
    """
    from eventbus import bus  # not at import time: it imports models (app registry)

    return bus.send_batch(events, workspace=workspace)


def create_event_key(
    workspace: str | None = None, *, name: str = "", prefixes: list[str] | None = None
) -> tuple[Any, str]:
    """Create a key for ``POST /e/<key>`` in ``workspace``; return ``(EventKey, key)``.

    The key itself is returned this once and never stored (only its SHA-256 is). With
    ``prefixes``, the key may send only event names beginning with one of them.
    """
    from eventbus import keys  # not at import time: it imports models (app registry)

    return keys.create_event_key(workspace, name=name, prefixes=prefixes or ())
