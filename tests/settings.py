"""Settings for the test suite: the example project, tuned for fast, bounded tests.

Worker processes started by the tests use these settings too, with the database that
pytest-django created (``WORKFLOWS_TEST_DATABASE_NAME``).
"""

import os

# One broker folder and one queue per test session, shared with the worker processes
# the tests start (they inherit this environment), so parallel runs never mix. Under
# pytest-xdist each test process is a session of its own: its processes inherited the
# controller's variables, so they are named after the run and the xdist worker (which
# the worker processes a test starts inherit in turn).
_XDIST = os.environ.get("PYTEST_XDIST_WORKER")
if _XDIST:
    _SESSION = f"{os.environ.get('PYTEST_XDIST_TESTRUNUID', '')[:12]}-{_XDIST}"
    os.environ["EMBEDDED_BROKER_DIR"] = f"/tmp/workflows-test-broker-{_SESSION}"
    os.environ["CELERY_TASK_DEFAULT_QUEUE"] = f"workflows-test-{_SESSION}"
else:
    os.environ.setdefault("EMBEDDED_BROKER_DIR", f"/tmp/workflows-test-broker-{os.getpid()}")
    os.environ.setdefault("CELERY_TASK_DEFAULT_QUEUE", f"workflows-test-{os.getpid()}")

from settings.settings import *  # noqa: E402, F403  (after the environment above)
from settings.settings import DATABASES, INSTALLED_APPS  # noqa: E402

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]
WORKFLOWS_MODULES = [
    "tests.coord_workflows",
    "tests.chaos.workflows",
    "tests.wedge_workflows",
    "tests.deploy_workflows",
    "tests.schedule_workflows",
    "tests.observability_workflows",
    "tests.flow_workflows",
    "tests.admission_workflows",
]

if os.environ.get("WORKFLOWS_TEST_DATABASE_NAME"):
    # A worker process started by a test: use the test database directly.
    DATABASES["default"]["NAME"] = os.environ["WORKFLOWS_TEST_DATABASE_NAME"]

WORKFLOWS = {
    "LEASE_SECONDS": 4.0,
    "HEARTBEAT_SECONDS": 1.0,
    "RING_TIMEOUT_SECONDS": 3.0,
    "ETA_HORIZON_SECONDS": 10.0,
    "DISPATCH_INTERVAL_SECONDS": 0.2,
    "RETRY_BASE_SECONDS": 0.2,
    "RETRY_MAX_SECONDS": 2.0,
}
if os.environ.get("WORKFLOWS_TEST_NO_DISPATCHER"):
    # A worker that only executes what it is rung for: nothing is rung on a timer.
    WORKFLOWS["DISPATCHER_IN_WORKER"] = False
if os.environ.get("WORKFLOWS_TEST_RING_BATCH_SIZE"):
    # A worker whose tasks execute fewer runs each (1: a message per run).
    WORKFLOWS["RING_BATCH_SIZE"] = int(os.environ["WORKFLOWS_TEST_RING_BATCH_SIZE"])
if os.environ.get("WORKFLOWS_TEST_HAND_ON_SECONDS"):
    # How long a task of this worker executes runs handed a slot before ringing them.
    WORKFLOWS["HAND_ON_SECONDS"] = float(os.environ["WORKFLOWS_TEST_HAND_ON_SECONDS"])
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
