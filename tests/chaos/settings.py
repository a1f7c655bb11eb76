"""Settings of the processes the chaos suite starts: the test settings, plus

- no dispatcher thread in the workers: one standalone ``run_dispatcher`` process (which
  the controller kills and restarts) is the only dispatcher;
- the database connection is named after the process's role (``CHAOS_ROLE``), so the
  controller can terminate workers' connections in PostgreSQL.
"""

import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, WORKFLOWS

WORKFLOWS = {**WORKFLOWS, "DISPATCHER_IN_WORKER": False}

if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {})["application_name"] = os.environ.get(
        "CHAOS_ROLE", "chaos"
    )

if os.environ.get("CHAOS_DISPATCH_BATCH"):
    # Small batches make concurrent dispatchers interleave on the same rows.
    WORKFLOWS["DISPATCH_BATCH"] = int(os.environ["CHAOS_DISPATCH_BATCH"])
