"""Lease renewal while a run executes, so a long step is not taken over.

One daemon thread per worker process renews the leases of the runs that process is
executing. It stops renewing a run as soon as its execution ends, so a run whose worker
was killed is taken over once ``LEASE_SECONDS`` have passed. In a prefork pool child,
the main process renews them too (:mod:`workflows.leasekeeper`), so a step that holds
the interpreter cannot make the lease run out.
"""

import logging
import threading
from typing import Any

from django.db import connection

from workflows import conf, leasekeeper, runstore

logger = logging.getLogger("workflows.heartbeat")

_lock = threading.Lock()
_tracked: dict[str, str] = {}
_thread: threading.Thread | None = None
_wake = threading.Event()


class track:
    """Context manager: renew the lease of ``run_id`` held under ``token`` meanwhile."""

    def __init__(self, run_id: Any, token: str) -> None:
        self.run_id = str(run_id)
        self.token = token

    def __enter__(self) -> "track":
        with _lock:
            _tracked[self.run_id] = self.token
            _start()
        leasekeeper.tell("track", self.run_id, self.token)
        return self

    def __exit__(self, *exc: object) -> None:
        with _lock:
            if _tracked.get(self.run_id) == self.token:
                del _tracked[self.run_id]
        leasekeeper.tell("untrack", self.run_id, self.token)


def _start() -> None:
    global _thread
    if _thread is None or not _thread.is_alive():
        _thread = threading.Thread(target=_loop, name="workflows-heartbeat", daemon=True)
        _thread.start()


def _loop() -> None:
    while True:
        _wake.wait(conf.get().HEARTBEAT_SECONDS)
        with _lock:
            items = list(_tracked.items())
        for run_id, token in items:
            try:
                if not runstore.renew(run_id, token):
                    logger.info("run %s: lease no longer ours; stopping renewal", run_id)
                    with _lock:
                        if _tracked.get(run_id) == token:
                            del _tracked[run_id]
            except Exception:
                logger.warning("could not renew the lease of run %s", run_id, exc_info=True)
                connection.close()
