"""The engine's HTTP pages: ``GET /metrics`` (Prometheus)."""

import hmac

from django.conf import settings as django_settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET
from prometheus_client import exposition

from workflows import conf, metrics

#: The text format every Prometheus reads (newer clients announce it as 1.0.0, which a
#: Prometheus 2 does not know; the text is the same).
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)


def _login_url() -> str:
    try:
        return reverse("admin:login")
    except NoReverseMatch:
        return django_settings.LOGIN_URL


def _bears(request: HttpRequest, token: str) -> bool:
    given = request.headers.get("Authorization", "")
    if not token or not given.startswith("Bearer "):
        return False
    return hmac.compare_digest(given.removeprefix("Bearer ").encode(), token.encode())


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The metrics, to staff only unless ``WORKFLOWS["METRICS_PUBLIC"]`` (or to a request
    bearing ``WORKFLOWS["METRICS_TOKEN"]``): anonymous clients are sent to the admin
    login, logged-in non-staff users get 403."""
    settings = conf.get()
    if not settings.METRICS_PUBLIC and not _bears(request, settings.METRICS_TOKEN):
        user = request.user
        if not user.is_authenticated:
            return redirect_to_login(request.get_full_path(), _login_url())
        if not (user.is_active and user.is_staff):
            return HttpResponseForbidden("staff only")
    return HttpResponse(metrics.render(), content_type=CONTENT_TYPE)
