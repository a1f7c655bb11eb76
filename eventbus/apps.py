"""App configuration of the event bus."""

from django.apps import AppConfig


class EventbusConfig(AppConfig):
    """The ``eventbus`` app: workspaces and events."""

    name = "eventbus"
    verbose_name = "Event bus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the system checks of the event API; forget the remembered default
        workspace when workspaces change."""
        from django.db.models.signals import post_delete, post_migrate, post_save

        from eventbus import bus, checks  # noqa: F401  (checks registers on import)
        from eventbus.models import Workspace

        # The remembered default workspace must not outlive its row.
        post_save.connect(bus.forget_workspaces, sender=Workspace, dispatch_uid="eventbus-ws")
        post_delete.connect(bus.forget_workspaces, sender=Workspace, dispatch_uid="eventbus-ws")
        post_migrate.connect(bus.forget_workspaces, dispatch_uid="eventbus-ws-migrate")
