"""App configuration of the workflow engine."""

from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    """The ``workflows`` app: discovers workflows and wires them to the event bus."""

    name = "workflows"
    verbose_name = "Workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, once the app registry is ready: they import models.
        from eventbus import bus, tracing, validation
        from workflows import (  # noqa: F401
            checks,
            doorbell,
            lifecycle,
            registry,
            subscribers,
            telemetry,
            worker_hooks,
        )

        # Nobody else emits workflows/… events (no forged workflows/run.failed).
        validation.reserve_prefix(lifecycle.RESERVED_PREFIX)
        # The spans of sends come from the "workflows" tracer, as the engine's own do.
        tracing.use_namespace(telemetry.NAMESPACE)
        bus.subscribe(subscribers.start_runs)
        bus.subscribe(subscribers.resolve_waits)
        lifecycle.skippable_subscriber(subscribers.start_runs)
        lifecycle.skippable_subscriber(subscribers.resolve_waits)
        # Scheduled events are emitted on the broker's clock once their ts is near.
        bus.set_timer(doorbell.EventTimer())
        bus.set_shortcut(subscribers.start_quietly)
        registry.autodiscover()
