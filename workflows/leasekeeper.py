"""Lease renewal from the worker's main process, for steps that hold the interpreter.

A step that holds the GIL for longer than the lease (a C extension, a catastrophic
regular expression) stops the heartbeat thread of its own process, so another worker
would take the run over and run the step a second time. With Celery's prefork pool the
runs execute in child processes: the main process runs a :class:`Keeper` thread that
renews the leases its children tell it about (over a Unix datagram socket named after
the main process), as long as the child that holds each lease is alive. A child that is
killed or crashes stops being renewed at once, so its run is taken over as before.

The heartbeat thread of each child (:mod:`workflows.heartbeat`) renews too; the keeper
only adds a renewer that no step can block. Solo and thread pools have no parent to
help them: their heartbeat thread is all there is.
"""

import json
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from django.db import connection

from workflows import conf, runstore

logger = logging.getLogger("workflows.leasekeeper")

#: Largest message a child sends (a run id, a token, a pid and an operation).
_MAX_MESSAGE = 512


def socket_path(pid: int) -> Path:
    """Where the keeper of the worker process ``pid`` listens."""
    return Path(tempfile.gettempdir()) / f"workflows-keeper-{pid}.sock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Keeper(threading.Thread):
    """In a worker's main process: renews the leases its pool children hold."""

    def __init__(self) -> None:
        super().__init__(name="workflows-leasekeeper", daemon=True)
        self.path = socket_path(os.getpid())
        self._stop_event = threading.Event()
        #: run id -> (token, pid of the child executing it)
        self._leases: dict[str, tuple[str, int]] = {}
        self.path.unlink(missing_ok=True)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(self.path))
        os.chmod(self.path, 0o600)

    def run(self) -> None:
        """Receive track/untrack messages; renew every ``HEARTBEAT_SECONDS``."""
        next_renewal = time.monotonic()
        try:
            while not self._stop_event.is_set():
                self._socket.settimeout(max(0.05, next_renewal - time.monotonic()))
                try:
                    self._receive(self._socket.recv(_MAX_MESSAGE))
                except TimeoutError:
                    pass
                if time.monotonic() >= next_renewal:
                    self._renew()
                    next_renewal = time.monotonic() + conf.get().HEARTBEAT_SECONDS
        finally:
            self._socket.close()
            self.path.unlink(missing_ok=True)
            connection.close()

    def _receive(self, data: bytes) -> None:
        if self._stop_event.is_set():
            return  # the wake-up datagram of stop()
        try:
            message = json.loads(data)
            op, run_id, token, pid = (message[k] for k in ("op", "run", "token", "pid"))
        except (ValueError, KeyError, TypeError):
            logger.warning("lease keeper: ignoring a malformed message")
            return
        if op == "track":
            self._leases[str(run_id)] = (str(token), int(pid))
        elif op == "untrack" and self._leases.get(str(run_id), ("",))[0] == token:
            del self._leases[str(run_id)]

    def _renew(self) -> None:
        for run_id, (token, pid) in list(self._leases.items()):
            if not _alive(pid):
                # The child died: its run must be taken over when the lease ends.
                del self._leases[run_id]
                continue
            try:
                if not runstore.renew(run_id, token):
                    del self._leases[run_id]
            except Exception:
                logger.warning("lease keeper: could not renew run %s", run_id, exc_info=True)
                connection.close()

    def stop(self) -> None:
        """End the loop (and remove the socket) now: a datagram wakes its wait."""
        self._stop_event.set()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"{}", str(self.path))
        except OSError:
            pass  # it ends at its next timeout


def tell(op: str, run_id: Any, token: str) -> None:
    """In a pool child: tell the main process's keeper (if there is one) about a lease."""
    path = socket_path(os.getppid())
    if not path.exists():
        return
    message = json.dumps({"op": op, "run": str(run_id), "token": token, "pid": os.getpid()})
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), str(path))
    except OSError:
        pass  # the heartbeat thread still renews
