"""The example project's Celery app.

``DJANGO_SETTINGS_MODULE`` from the environment wins; ``settings.settings`` is only the
default. Every ``CELERY_*`` Django setting configures the app.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")

app = Celery("settings")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
