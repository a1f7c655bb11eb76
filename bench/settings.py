"""Django settings of the benchmark: the example project on the bench's own PostgreSQL
database and Redis db, with the bench workflows (not the demo's) and a queue of its own."""

import os

from bench import config

os.environ.setdefault("DATABASE_URL", config.MAIN_URL)
os.environ.setdefault("CELERY_BROKER_URL", config.REDIS_URL)
os.environ.setdefault("CELERY_TASK_DEFAULT_QUEUE", config.WF_QUEUE)

from settings.settings import *  # noqa: F403

DEBUG = False  # DEBUG keeps every query in memory: it would skew the memory figures.
CELERY_RESULT_BACKEND = None
if os.environ.get("BENCH_DB_REUSE_MAX"):
    # The project ships with 1000; "0" shows what a new connection per task costs.
    CELERY_DB_REUSE_MAX = int(os.environ["BENCH_DB_REUSE_MAX"]) or None
    if not CELERY_DB_REUSE_MAX:
        DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
# Only the bench workflows: the example app's demo workflows would add a wildcard
# subscriber that every event name is checked against.
INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "example"]  # noqa: F405
WORKFLOWS_MODULES = ["bench.workflows"]
WORKFLOWS = {"QUEUE": config.WF_QUEUE}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {
        "workflows": {"level": os.environ.get("WORKFLOWS_LOG_LEVEL", "WARNING")},
        "eventbus": {"level": os.environ.get("WORKFLOWS_LOG_LEVEL", "WARNING")},
    },
}
