"""App configuration of the workflow engine."""

from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    """The ``workflows`` app: discovers workflows and wires them to the event bus."""

    name = "workflows"
    verbose_name = "Workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from eventbus import bus
        from workflows import checks, registry, signals, triggers, waits  # noqa: F401

        bus.subscribe(triggers.on_events)
        bus.subscribe(waits.on_events)
        registry.autodiscover()
