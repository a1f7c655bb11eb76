"""URLs of the example project: the Django admin is the console."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("admin/", admin.site.urls),
    # The HTTP event API (POST /e/<key>) and webhooks (POST /w/<id>), at the root:
    # Inngest's clients post to /e/<key> whatever path their base URL has.
    path("", include("eventbus.urls")),
    # GET /metrics (Prometheus; staff-only unless WORKFLOWS["METRICS_PUBLIC"]).
    path("", include("workflows.urls")),
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
]
