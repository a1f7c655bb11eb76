"""The example Django project: settings, URLs and the Celery app.

Importing the package loads the Celery app so that ``celery -A settings worker`` finds it
and ``@shared_task`` functions bind to it.
"""

from .celery import app

__all__ = ["app"]
