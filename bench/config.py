"""Where the benchmark runs: its own databases, Redis db and queues (no Django here).

Every value can be overridden from the environment, so the bench never touches the
databases or queues of the project, its tests or another run.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

#: Server part of the PostgreSQL URL; the bench creates its own databases on it.
PG_SERVER = os.environ.get("BENCH_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")
#: Database of this project's tables and of every peer's ``bench_mark`` rows.
MAIN_DB = os.environ.get("BENCH_MAIN_DB", "bench_main")
#: DBOS's system database.
DBOS_DB = os.environ.get("BENCH_DBOS_DB", "bench_dbos")
MAIN_URL = f"{PG_SERVER}/{MAIN_DB}"
DBOS_URL = f"{PG_SERVER}/{DBOS_DB}"

#: Redis database of the broker and the bench's notifications (not 0-3: others use them).
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
#: Queue of this project's engine tasks.
WF_QUEUE = os.environ.get("BENCH_WF_QUEUE", "bench-wf")
#: Queue of the plain Celery peer.
CELERY_QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench-celery")
#: Name of the DBOS application and of its queue.
DBOS_APP = "bench"
DBOS_QUEUE = "bench_q"
#: Seconds between two DBOS queue polls (its default is 1 s; 0.1 s is kinder to it).
DBOS_POLL_SECONDS = float(os.environ.get("BENCH_DBOS_POLL", "0.1"))

#: Redis key prefix of the bench's notifications.
NOTIFY_PREFIX = "bench:notify:"

RESULTS_DIR = Path(__file__).resolve().parent / "results"
