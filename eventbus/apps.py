"""App configuration of the event bus."""

from django.apps import AppConfig


class EventbusConfig(AppConfig):
    """The ``eventbus`` app: workspaces and events."""

    name = "eventbus"
    verbose_name = "Event bus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the system checks of the event API."""
        from eventbus import checks  # noqa: F401  (registers on import)
