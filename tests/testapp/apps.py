"""A test-only app whose ``workflows.py`` is found by autodiscovery."""

from django.apps import AppConfig


class TestappConfig(AppConfig):
    """Workflows and a ledger used by the test suite."""

    name = "tests.testapp"
    label = "testapp"
    default_auto_field = "django.db.models.BigAutoField"
