"""Routes of the HTTP event API and the webhooks: include at the root of the URLconf.

``path("", include("eventbus.urls"))``: Inngest's clients post to ``/e/<key>`` at the
root of their base URL, whatever path it has, and follow no redirect (so no trailing
slash either).
"""

from django.urls import path

from eventbus import views

app_name = "eventbus"

urlpatterns = [
    path("e/<str:event_key>", views.event_api, name="events"),
    path("w/<uuid:webhook_id>", views.webhook, name="webhook"),
]
