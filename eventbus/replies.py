"""The JSON replies of the HTTP event API and the webhooks, in the shape Inngest's use.

Inngest's clients parse every reply as ``{"error"?: str | null, "ids"?: [str]}``: an
HTML error page or an empty body raises in the client, and a non-null ``error`` raises
even on a 200. So every reply of these routes, errors included, is built here.
"""

import uuid
from collections.abc import Sequence

from django.http import JsonResponse
from django.urls import NoReverseMatch, reverse


def accepted(ids: Sequence[str]) -> JsonResponse:
    """``200 {"ids": [...], "status": 200}``: every event of the request is stored."""
    return JsonResponse({"ids": list(ids), "status": 200})


def error(status: int, message: str, *, with_ids: bool = True) -> JsonResponse:
    """``{"ids": [], "status": status, "error": message}`` (``ids`` left out if asked)."""
    body: dict[str, object] = {"ids": []} if with_ids else {}
    body.update(status=status, error=message)
    response = JsonResponse(body, status=status)
    response["Cache-Control"] = "no-store"
    return response


def method_not_allowed(method: str) -> JsonResponse:
    """``405`` with ``Allow: POST``."""
    response = error(405, f"method {method} is not allowed: send events with POST")
    response["Allow"] = "POST"
    return response


def is_json(response: object) -> bool:
    """Whether ``response`` already carries a JSON body."""
    content_type = getattr(response, "get", lambda *_: "")("Content-Type", "") or ""
    return content_type.split(";")[0].strip() == "application/json"


def route_prefixes() -> tuple[str, ...]:
    """The path prefixes of the event API and the webhooks in the current URLconf."""
    found = []
    for name, argument in (("eventbus:events", "k"), ("eventbus:webhook", uuid.UUID(int=0))):
        try:
            path = reverse(name, args=[argument])
        except NoReverseMatch:
            continue
        found.append(path[: -len(str(argument))])
    return tuple(found)
