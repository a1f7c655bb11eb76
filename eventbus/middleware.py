"""JSON replies on the event API's routes, also for what Django refuses before the view.

Inngest's clients parse every reply as JSON, so an HTML error page is itself an error
to them. Django answers some requests before any view runs: a ``Host`` header not in
``ALLOWED_HOSTS`` (``DisallowedHost``, raised by ``CommonMiddleware``), a body over
``DATA_UPLOAD_MAX_MEMORY_SIZE`` read by another middleware (``RequestDataTooBig``), a
path that resolves to nothing (404), a crash (500). Put :class:`EventApiMiddleware`
first in ``MIDDLEWARE``: for paths under the event API's and the webhooks' prefixes
(``/e/`` and ``/w/`` where ``eventbus.urls`` is mounted at the root) it checks the host
itself and turns every reply that is not JSON into ``{"status": …, "error": …}``.
Other paths are not touched.
"""

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponseBase

from eventbus import replies

_MESSAGES = {
    404: "not found: send events to POST /e/<event key> and webhooks to POST /w/<webhook "
    "id>, without a trailing slash",
    500: "internal server error",
}


class EventApiMiddleware:
    """Every reply under the event API's and the webhooks' prefixes is JSON."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        """Answer for the routes in JSON; pass every other request through untouched."""
        scope = replies.route_prefixes()
        if not scope or not request.path.startswith(scope):
            return self.get_response(request)
        try:
            request.get_host()
        except DisallowedHost:
            return replies.error(
                400, "the Host header names a host this server does not serve (ALLOWED_HOSTS)"
            )
        response = self.get_response(request)
        if replies.is_json(response):
            return response
        return _as_json(request, response)


def _as_json(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    status = response.status_code
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if status == 400 and limit is not None and declared.isdigit() and int(declared) > limit:
        # RequestDataTooBig: a middleware read the body against Django's form limit.
        status, message = (
            413,
            (
                f"the request body is over {limit} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE, "
                "applied by a middleware that read the body before the event API)"
            ),
        )
    else:
        message = _MESSAGES.get(status) or f"{status} {response.reason_phrase}".lower()
    reply = replies.error(status, message)
    if response.has_header("Location"):
        reply["Location"] = response["Location"]  # a redirect stays one, in JSON
    if response.has_header("Allow"):
        reply["Allow"] = response["Allow"]
    return reply
