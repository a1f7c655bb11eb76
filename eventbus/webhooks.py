"""Webhooks: verifying a delivery's signature, and turning it into events.

The raw body is verified before anything parses it. Signatures are compared with
:func:`hmac.compare_digest`, so the time a comparison takes says nothing about how much
of a forged signature was right.
"""

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest
from django.utils.module_loading import import_string

from eventbus import conf, validation
from eventbus.exceptions import EventError
from eventbus.models import Webhook, WebhookScheme

#: A transform: the verified request in, a list of event dicts out.
Transform = Callable[[HttpRequest], list[dict[str, Any]]]


class SignatureError(Exception):
    """The delivery's signature is missing or wrong."""


def _hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify(webhook: Webhook, request: HttpRequest, raw: bytes) -> None:
    """Raise :class:`SignatureError` unless ``raw`` is signed with the webhook's secret."""
    if webhook.scheme == WebhookScheme.HMAC_SHA256:
        given = request.headers.get("X-Hub-Signature-256", "")
        if not given:
            raise SignatureError("missing X-Hub-Signature-256 header")
        expected = "sha256=" + _hmac_hex(webhook.secret, raw)
        if not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise SignatureError("X-Hub-Signature-256 does not match the body")
        return
    if webhook.scheme == WebhookScheme.STRIPE:
        _verify_stripe(webhook.secret, request.headers.get("Stripe-Signature", ""), raw)
        return
    raise SignatureError(f"unknown signature scheme {webhook.scheme!r}")


def _verify_stripe(secret: str, header: str, raw: bytes) -> None:
    """Stripe's scheme: ``t=<unix s>,v1=<hex HMAC-SHA256 of "<t>.<body>">[,v1=…]``."""
    if not header:
        raise SignatureError("missing Stripe-Signature header")
    timestamp = ""
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            candidates.append(value)
    if not timestamp.isdigit() or not candidates:
        raise SignatureError("Stripe-Signature has no t=<timestamp> or no v1= signature")
    expected = _hmac_hex(secret, timestamp.encode() + b"." + raw).encode()
    # Check every candidate (Stripe sends two while a secret is being rolled).
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(candidate.encode(), expected)
    if not matched:
        raise SignatureError("Stripe-Signature does not match the body")
    tolerance = conf.get().WEBHOOK_TOLERANCE_SECONDS
    if int(timestamp) < time.time() - tolerance:
        # As Stripe's own libraries: an old, validly signed delivery may be a replay.
        raise SignatureError(f"Stripe-Signature timestamp is older than {tolerance} seconds")


def delivery_id(webhook: Webhook, request: HttpRequest, body: Any) -> str | None:
    """The provider's id of this delivery (the same on its retries), if it gives one.

    GitHub: the ``X-GitHub-Delivery`` header. Stripe: the event's ``id`` (``evt_…``).
    """
    if webhook.scheme == WebhookScheme.STRIPE:
        value = body.get("id") if isinstance(body, dict) else None
    else:
        value = request.headers.get("X-GitHub-Delivery")
    return value if isinstance(value, str) and value else None


def default_transform(webhook: Webhook, body: Any) -> list[dict[str, Any]]:
    """One event named ``webhook.event_name`` with the JSON body as its ``data``."""
    if not isinstance(body, dict):
        raise EventError(
            f"the body is a JSON {type(body).__name__}; the default transform needs a "
            "JSON object (give the webhook a transform for other bodies)"
        )
    return [{"name": webhook.event_name, "data": body}]


def load_transform(path: str) -> Transform:
    """Import the transform at dotted ``path``; ``ValueError`` saying why it cannot be."""
    try:
        function = import_string(path)
    except ImportError as exc:
        raise ValueError(f"transform {path!r} cannot be imported: {exc}") from None
    if not callable(function):
        raise ValueError(f"transform {path!r} is a {type(function).__name__}, not a function")
    return function


def check(webhook: Webhook) -> dict[str, str]:
    """What is wrong with ``webhook``'s settings, by field (empty when nothing is)."""
    problems: dict[str, str] = {}
    try:
        validation.event_name(webhook.event_name)
    except EventError as exc:
        problems["event_name"] = str(exc)
    if webhook.transform:
        try:
            load_transform(webhook.transform)
        except ValueError as exc:
            problems["transform"] = str(exc)
    if webhook.scheme not in WebhookScheme.values:
        problems["scheme"] = f"allowed: {', '.join(WebhookScheme.values)}"
    return problems
