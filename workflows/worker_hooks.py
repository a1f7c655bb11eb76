"""Celery worker hooks: start the in-worker dispatcher and the lease keeper when the
worker is ready, and stop them at shutdown; flush each process's metric counts."""

import logging
from typing import Any

from celery.signals import (
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from workflows import conf, dispatcher, leasekeeper, tally

logger = logging.getLogger("workflows.worker_hooks")
_thread = None
_keeper: leasekeeper.Keeper | None = None


@worker_ready.connect
def start_dispatcher(**_: Any) -> None:
    """In the worker's main process: start the lease keeper, and a dispatcher thread
    (unless ``DISPATCHER_IN_WORKER`` is off)."""
    global _thread, _keeper
    tally.start_flusher()
    if _keeper is None:
        # Renews the leases of the pool's children from this process (see leasekeeper).
        try:
            _keeper = leasekeeper.Keeper()
        except OSError:
            logger.warning("no lease keeper: could not bind its socket", exc_info=True)
        else:
            _keeper.start()
    if not conf.get().DISPATCHER_IN_WORKER or _thread is not None:
        return
    _thread = dispatcher.DispatcherThread()
    _thread.start()


@worker_shutdown.connect
def stop_dispatcher(**_: Any) -> None:
    """Stop the dispatcher thread when the worker shuts down."""
    global _thread, _keeper
    if _thread is not None:
        _thread.stop()
        _thread.join(timeout=5)
        _thread = None
    if _keeper is not None:
        _keeper.stop()
        _keeper.join(timeout=5)
        _keeper = None
    tally.flush()


@worker_process_init.connect
def start_process_flusher(**_: Any) -> None:
    """In each pool process: write its metric counts to the database in the background,
    so a step costs no extra query (see :mod:`workflows.tally`)."""
    tally.start_flusher(forked=True)


@worker_process_shutdown.connect
def flush_process_counts(**_: Any) -> None:
    """A pool process that stops writes what it counted since its last flush."""
    tally.flush()
