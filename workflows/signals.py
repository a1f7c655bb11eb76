"""Celery worker hooks: start the in-worker dispatcher when the worker is ready."""

from typing import Any

from celery.signals import worker_ready, worker_shutdown

from workflows import conf, dispatcher

_thread = None


@worker_ready.connect
def start_dispatcher(**_: Any) -> None:
    """Start a dispatcher thread in the worker's main process (unless disabled)."""
    global _thread
    if not conf.get().DISPATCHER_IN_WORKER or _thread is not None:
        return
    _thread = dispatcher.DispatcherThread()
    _thread.start()


@worker_shutdown.connect
def stop_dispatcher(**_: Any) -> None:
    """Stop the dispatcher thread when the worker shuts down."""
    global _thread
    if _thread is not None:
        _thread.stop()
        _thread.join(timeout=5)
        _thread = None
