"""URLs of the engine: ``path("", include("workflows.urls"))`` serves ``GET /metrics``."""

from django.urls import path

from workflows import views

app_name = "workflows"
urlpatterns = [path("metrics", views.metrics_view, name="metrics")]
