"""Settings of the example project.

Configuration comes from the environment:

- ``DATABASE_URL``: default ``sqlite:///var/db.sqlite3`` under the repository (no server).
  ``postgresql://user@host:5432/name`` works as well.
- ``WORKFLOWS_PGBOUNCER=1``: ``DATABASE_URL`` is a PgBouncer in transaction pooling mode
  (no server-side cursors, no prepared statements; see docs/operations.md).
- ``CELERY_BROKER_URL``: default ``filesystem://``, an embedded broker that keeps its
  messages in ``var/broker/`` (no server). ``redis://…`` and ``amqp://…`` work as well.
- ``DJANGO_SECRET_KEY``, ``DJANGO_DEBUG``, ``DJANGO_ALLOWED_HOSTS`` for a real deployment.
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "insecure-example-key-change-me-for-any-real-deployment"
)
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_results",
    "eventbus",
    "workflows",
    "example",  # the demo: its workflows.py and `manage.py demo` (not packaged)
]

MIDDLEWARE = [
    # First: replies of the HTTP event API (/e/, /w/) are JSON even when Django refuses
    # a request before the view (a Host not in ALLOWED_HOSTS, a 404).
    "eventbus.middleware.EventApiMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "settings.urls"
WSGI_APPLICATION = "settings.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database_from_env() -> dict:
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
    # Persistent connections: a worker runs many short tasks, and a new PostgreSQL
    # connection costs more than a whole step (see CELERY_DB_REUSE_MAX below).
    config = dj_database_url.parse(url, conn_max_age=600)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # Workers, the dispatcher and the web process share one file: WAL lets readers
        # run beside the writer, and IMMEDIATE transactions take the write lock up
        # front, so two writers queue instead of failing with "database is locked".
        config["OPTIONS"] = {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
        # Tests run a real worker process, which cannot see an in-memory database.
        config["TEST"] = {"NAME": str(Path(config["NAME"]).with_suffix(".test.sqlite3"))}
    elif os.environ.get("WORKFLOWS_PGBOUNCER") == "1":
        # DATABASE_URL is a PgBouncer in transaction pooling mode: consecutive
        # transactions of one connection may run on different server sessions, so
        # nothing may outlive a transaction. Django's server-side cursors (``.iterator()``
        # outside ``atomic``: a cursor WITH HOLD, fetched later) would be lost, and
        # prepared statements (psycopg prepares a query after ``prepare_threshold``
        # executions) would be missing on the next session: Django leaves them off by
        # default (``None``), and this keeps them off.
        config["DISABLE_SERVER_SIDE_CURSORS"] = True
        config.setdefault("OPTIONS", {})["prepare_threshold"] = None
    return config


DATABASES = {"default": _database_from_env()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {
        "workflows": {"level": os.environ.get("WORKFLOWS_LOG_LEVEL", "INFO")},
        "eventbus": {"level": os.environ.get("WORKFLOWS_LOG_LEVEL", "INFO")},
    },
}

# --- Celery -------------------------------------------------------------------------
# The broker only rings the bell: runs, steps and due times live in the database.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "filesystem://"
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = Path(os.environ.get("EMBEDDED_BROKER_DIR", VAR_DIR / "broker"))
    for _sub in ("queue", "control", "processed"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "control_folder": str(_broker_dir / "control"),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
    # kombu's transport, but a message is never read before it is whole (fsbroker.py).
    CELERY_BROKER_TRANSPORT = "settings.fsbroker.Transport"
elif CELERY_BROKER_URL.startswith("redis"):
    # Redis redelivers an unacknowledged message after this long; the engine never
    # asks the broker to hold a message for longer (see WORKFLOWS["ETA_HORIZON"]).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}

CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 4
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# `celery worker -B` (or `celery beat`) keeps its schedule state in a file: under var/,
# not in whatever directory the worker was started from.
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Celery's Django fix-up closes the database connection before and after every task
# unless this is set, so each task would pay a new connection (a third of a short run).
# With it, a worker closes its connection every 1,000 tasks, and the engine's tasks
# drop a broken one first (``close_old_connections``, which also honours CONN_MAX_AGE).
CELERY_DB_REUSE_MAX = 1000

# --- The workflow engine and the event bus ----------------------------------------------
WORKFLOWS: dict = {}
EVENTBUS: dict = {}
