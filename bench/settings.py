"""Django settings of the benchmark: the example project on the bench's own PostgreSQL
database and Redis db, with the bench workflows and a queue of its own."""

import os

from bench import config

os.environ.setdefault("DATABASE_URL", config.MAIN_URL)
os.environ.setdefault("CELERY_BROKER_URL", config.REDIS_URL)
os.environ.setdefault("CELERY_TASK_DEFAULT_QUEUE", config.WF_QUEUE)

from settings.settings import *  # noqa: F403

DEBUG = False  # DEBUG keeps every query in memory: it would skew the memory figures.
DATABASES["default"]["CONN_MAX_AGE"] = None  # noqa: F405 - as any production worker
CELERY_RESULT_BACKEND = None
if os.environ.get("BENCH_DB_REUSE_MAX"):
    # Celery's Django fixup closes the database connection before and after every task
    # unless this is set; the bench runs as the project ships unless told otherwise.
    CELERY_DB_REUSE_MAX = int(os.environ["BENCH_DB_REUSE_MAX"])
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
