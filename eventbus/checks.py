"""System checks of the event API's wiring (``manage.py check``)."""

from typing import Any

from django.conf import settings
from django.core.checks import Warning, register

from eventbus import replies

MIDDLEWARE = "eventbus.middleware.EventApiMiddleware"
_BEFORE = ("django.middleware.common.CommonMiddleware", "django.middleware.csrf.CsrfViewMiddleware")


@register()
def check_event_api(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Warn when the event API is served in a way Inngest's clients cannot use."""
    found = replies.route_prefixes()
    if not found:
        return []
    problems = []
    if found[0] != "/e/":
        problems.append(
            Warning(
                f"The event API is served under {found[0]!r}, not at '/e/'.",
                hint="Inngest's clients post to /e/<key> at the root of their base URL: "
                'include eventbus.urls at the root of ROOT_URLCONF (path("", include(…))).',
                id="eventbus.W001",
            )
        )
    stack = list(settings.MIDDLEWARE)
    if MIDDLEWARE not in stack:
        problems.append(
            Warning(
                f"{MIDDLEWARE} is not in MIDDLEWARE.",
                hint="Without it, replies Django makes before the view (a Host not in "
                "ALLOWED_HOSTS, a 404, a 500) are HTML, which Inngest's clients cannot "
                "read. Put it first in MIDDLEWARE.",
                id="eventbus.W002",
            )
        )
    elif any(name in stack[: stack.index(MIDDLEWARE)] for name in _BEFORE):
        problems.append(
            Warning(
                f"{MIDDLEWARE} comes after CommonMiddleware or CsrfViewMiddleware.",
                hint="Those answer some requests in HTML before it sees them: put it first.",
                id="eventbus.W003",
            )
        )
    return problems
