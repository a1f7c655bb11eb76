"""App configuration of the example project's demo."""

from django.apps import AppConfig


class ExampleConfig(AppConfig):
    """The ``example`` app: ``workflows.py`` (found by autodiscovery) and ``manage.py demo``."""

    name = "example"
    verbose_name = "Example (demo)"
    default_auto_field = "django.db.models.BigAutoField"
