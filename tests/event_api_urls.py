"""A URLconf that mounts the event API under a prefix (what the system check warns of)."""

from django.urls import include, path

urlpatterns = [path("api/", include("eventbus.urls"))]
