"""App configuration of the workflow engine."""

from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    """The ``workflows`` app: discovers workflows and wires them to the event bus."""

    name = "workflows"
    verbose_name = "Workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, once the app registry is ready: they import models.
        from eventbus import bus, validation
        from workflows import checks, lifecycle, registry, signals, subscribers  # noqa: F401

        # Nobody else emits workflows/… events (no forged workflows/run.failed).
        validation.reserve_prefix(lifecycle.RESERVED_PREFIX)
        bus.subscribe(subscribers.start_runs)
        bus.subscribe(subscribers.resolve_waits)
        registry.autodiscover()
