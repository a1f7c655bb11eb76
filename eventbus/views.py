"""The HTTP event API (``POST /e/<event key>``, Inngest's wire format) and webhooks.

A request is all or nothing: its body is read within ``EVENTBUS["MAX_REQUEST_BYTES"]``,
every event is validated, and only then are they stored, in one transaction, into the
workspace of the key (or the webhook) — never one the request names.
"""

import io
import json
import logging
import re
import uuid
from typing import Any

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from eventbus import bus, conf, keys, replies, tracing, validation, webhooks
from eventbus.exceptions import EventError
from eventbus.models import Webhook

logger = logging.getLogger(__name__)

#: What Inngest's clients send in ``x-inngest-event-id-seed``: ``<unix ms>,<base64>``.
_SEED_RE = re.compile(r"^[0-9]{1,20},[A-Za-z0-9+/=_-]{1,128}$")
_ALLOWED_KEYS = ("name", "data", "id", "ts", "v")


class _Refused(Exception):
    """Stop handling the request with this error reply."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@csrf_exempt
def event_api(request: HttpRequest, event_key: str) -> JsonResponse:
    """``POST /e/<event_key>``: store one event or an array of them; reply with their ids."""
    if request.method != "POST":
        return replies.method_not_allowed(request.method or "")
    key = keys.find(event_key)
    if key is None:
        return replies.error(401, "Event key not found", with_ids=False)
    try:
        seed = _seed(request)
        payload = _parse(_read_body(request))
        events = _items(payload)
        specs = _specs(events, lambda index, given: given or _seeded(seed, index))
        refused = keys.refused_name(key, [spec.name for spec in specs])
        if refused is not None:
            allowed = ", ".join(repr(prefix) for prefix in key.prefixes)
            raise _Refused(
                403, f"this event key may only send names beginning with {allowed}; not {refused!r}"
            )
    except _Refused as refusal:
        return replies.error(refusal.status, str(refusal))
    names = [spec.name for spec in specs]
    with (
        tracing.incoming(request.headers),
        tracing.send_span(names, key.workspace.slug),
        transaction.atomic(),
    ):
        ids = bus.store(specs, key.workspace)
        keys.touch(key)
    return replies.accepted(ids)


@csrf_exempt
def webhook(request: HttpRequest, webhook_id: uuid.UUID) -> JsonResponse:
    """``POST /w/<webhook_id>``: verify the signature of the raw body, then store its events."""
    if request.method != "POST":
        return replies.method_not_allowed(request.method or "")
    hook = Webhook.objects.select_related("workspace").filter(pk=webhook_id).first()
    if hook is None or not hook.enabled:
        return replies.error(404, "Webhook not found")
    try:
        raw = _read_body(request)
        try:
            webhooks.verify(hook, request, raw)
        except webhooks.SignatureError as exc:
            raise _Refused(401, f"bad signature: {exc}") from None
        items = _transform(hook, request, raw)
        delivery = webhooks.delivery_id(hook, request, _json_or_none(raw))
        single = len(items) == 1

        def delivery_key(index: int, given: str | None) -> str | None:
            # The provider's delivery id, verbatim, is the event's idempotency key (with
            # the index added when one delivery makes several events).
            if given or delivery is None:
                return given
            return delivery if single else f"{delivery}:{index}"

        specs = _specs(items, delivery_key)
    except _Refused as refusal:
        return replies.error(refusal.status, str(refusal))
    with transaction.atomic():
        ids = bus.store(specs, hook.workspace)
        now = timezone.now()
        if hook.last_used_at is None or hook.last_used_at <= now - keys.TOUCH_EVERY:
            Webhook.objects.filter(pk=hook.pk).update(last_used_at=now)
    return replies.accepted(ids)


def _read_body(request: HttpRequest) -> bytes:
    """The raw body, at most ``MAX_REQUEST_BYTES`` (413 beyond), whatever its content type.

    Read from the stream, so Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (made for forms)
    does not cap it; kept as ``request.body`` for transforms.
    """
    limit = conf.get().MAX_REQUEST_BYTES
    too_big = _Refused(
        413, f"the request body is over {limit} bytes (EVENTBUS['MAX_REQUEST_BYTES']): split it"
    )
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise too_big
    if hasattr(request, "_body"):  # a middleware has read it already
        raw = request.body
    else:
        raw = request.read(limit + 1)
        # What HttpRequest.body does itself, so request.body and request.POST still work.
        request._body = raw
        request._stream = io.BytesIO(raw)
    if len(raw) > limit:
        raise too_big
    return raw


def _parse(raw: bytes) -> Any:
    if not raw.strip():
        raise _Refused(400, "the body is empty: send a JSON event object or an array of them")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise _Refused(400, "the body is not UTF-8 text: send JSON") from None
    except ValueError as exc:
        raise _Refused(400, f"the body is not valid JSON: {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (only finite numbers)")


def _json_or_none(raw: bytes) -> Any:
    try:
        return _parse(raw)
    except _Refused:
        return None


def _items(payload: Any) -> list[Any]:
    """The events of a body: one object, or a non-empty array within the count limit."""
    if isinstance(payload, dict):
        return [payload]
    if not isinstance(payload, list):
        raise _Refused(
            400,
            f"the body is a JSON {_json_type(payload)}: send an event object "
            '({"name": …, "data": {…}}) or an array of them',
        )
    if not payload:
        raise _Refused(400, "the body is an empty array: send at least one event")
    limit = conf.get().MAX_REQUEST_EVENTS
    if len(payload) > limit:
        raise _Refused(
            400,
            f"a request holds at most {limit} events (EVENTBUS['MAX_REQUEST_EVENTS']); "
            f"got {len(payload)}: split it",
        )
    return payload


def _specs(items: list[Any], idempotency_key: Any) -> list[validation.EventSpec]:
    """Validate every item (all or nothing); ``idempotency_key(index, given_id)`` fills ids."""
    specs = []
    for index, item in enumerate(items):
        where = f"events[{index}]" if len(items) > 1 else "the event"
        if not isinstance(item, dict):
            raise _Refused(400, f"{where} is a JSON {_json_type(item)}; it must be an object")
        extra = sorted(set(item) - set(_ALLOWED_KEYS))
        if extra:
            raise _Refused(
                400, f"{where} has unknown fields {extra}; allowed: {list(_ALLOWED_KEYS)}"
            )
        if "name" not in item:
            raise _Refused(400, f"{where} has no 'name'")
        version = item.get("v")
        if version is not None and (not isinstance(version, str) or len(version) > 255):
            raise _Refused(400, f"{where}: 'v' must be a string of at most 255 characters")
        given = item.get("id")
        if given == "":
            given = None  # what Inngest's clients send for "no id"
        try:
            specs.append(
                validation.event(
                    item["name"],
                    item.get("data"),
                    item.get("ts"),
                    idempotency_key(index, given),
                )
            )
        except EventError as exc:
            raise _Refused(400, f"{where}: {exc}") from None
    return specs


def _seed(request: HttpRequest) -> str | None:
    seed = request.headers.get("X-Inngest-Event-Id-Seed")
    if seed is None:
        return None
    if not _SEED_RE.match(seed):
        raise _Refused(
            400,
            "the x-inngest-event-id-seed header must be '<unix ms>,<base64>', as Inngest's "
            "clients send it",
        )
    return seed


def _seeded(seed: str | None, index: int) -> str | None:
    """The idempotency key of the ``index``-th event of a request without its own ``id``.

    A client retrying after a lost reply sends the same seed: the same keys, so nothing
    is stored twice and the first ids are returned.
    """
    return None if seed is None else f"inngest-seed:{seed}:{index}"


def _transform(hook: Webhook, request: HttpRequest, raw: bytes) -> list[Any]:
    """The event dicts a verified delivery makes: the webhook's transform, or the default."""
    if not hook.transform:
        try:
            return webhooks.default_transform(hook, _parse(raw))
        except EventError as exc:
            raise _Refused(400, str(exc)) from None
    try:
        function = webhooks.load_transform(hook.transform)
    except ValueError as exc:
        logger.error("webhook %s: %s", hook.pk, exc)
        raise _Refused(500, f"the webhook is misconfigured: {exc}") from None
    request.webhook = hook  # type: ignore[attr-defined]  # for transforms serving several
    try:
        result = function(request)
    except Exception as exc:
        raise _Refused(400, f"transform {hook.transform} failed: {exc}") from None
    if isinstance(result, dict):
        result = [result]
    if not isinstance(result, list | tuple):
        raise _Refused(
            400,
            f"transform {hook.transform} returned a {type(result).__name__}; "
            "it must return a list of event dicts",
        )
    if len(result) > conf.get().MAX_REQUEST_EVENTS:
        raise _Refused(
            400,
            f"transform {hook.transform} returned {len(result)} events; the limit is "
            f"{conf.get().MAX_REQUEST_EVENTS} (EVENTBUS['MAX_REQUEST_EVENTS'])",
        )
    return list(result)


def _json_type(value: Any) -> str:
    names = {str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return names.get(type(value), type(value).__name__)
