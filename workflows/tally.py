"""Counting the engine's work in each process, and adding the counts to the database.

``GET /metrics`` is served by a web process, while the work is done by Celery pool
processes on other hosts: each process counts in memory (:func:`add`,
:func:`observe`: a dictionary update, never a query in the step's path) and adds its
counts to the :class:`~workflows.models.MetricTally` rows: every
``METRICS_FLUSH_SECONDS`` from a background thread in worker processes
(:mod:`workflows.worker_hooks`) and in ``run_dispatcher``; in a web process after a
request once that much time has passed (``request_finished``), and before each scrape;
at exit everywhere. The totals in the database are what every scrape reads: they cover
all processes and never go down. A process killed outright loses what it counted since
its last flush.
"""

import atexit
import functools
import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping

from django import db
from django.core.signals import request_finished
from django.db import IntegrityError, transaction
from django.db.models import F

from workflows import conf
from workflows.models import MetricTally

logger = logging.getLogger("workflows.tally")

#: Upper bounds (seconds) of the buckets of ``workflows_step_duration_seconds``.
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

_lock = threading.Lock()
#: (series name, labels as sorted JSON) -> amount counted since the last flush.
_pending: dict[tuple[str, str], float] = {}
_last_flush = 0.0
_flusher: threading.Thread | None = None


def labels_key(labels: Mapping[str, str]) -> str:
    """The stored form of a series' labels (sorted JSON, so one series is one row)."""
    return _stored(tuple(sorted(labels.items())))


@functools.lru_cache(maxsize=4096)
def _stored(items: tuple[tuple[str, str], ...]) -> str:
    # A process meets few distinct label sets; each step would encode four of them.
    return json.dumps(dict(items), separators=(",", ":"))


def add(name: str, labels: Mapping[str, str], amount: float = 1.0) -> None:
    """Count ``amount`` more for the series ``name{labels}``."""
    key = (name, labels_key(labels))
    with _lock:
        _pending[key] = _pending.get(key, 0.0) + amount


def observe(name: str, labels: Mapping[str, str], seconds: float) -> None:
    """Count one observation of a histogram: its bucket (``le``), ``_sum`` and ``_count``.

    Buckets are stored one by one (not cumulated); the scrape adds them up.
    """
    bound = next((b for b in DURATION_BUCKETS if seconds <= b), None)
    bucket = {**labels, "le": "+Inf" if bound is None else repr(bound)}
    with _lock:
        for series, series_labels, amount in (
            (f"{name}_bucket", bucket, 1.0),
            (f"{name}_sum", labels, seconds),
            (f"{name}_count", labels, 1.0),
        ):
            key = (series, labels_key(series_labels))
            _pending[key] = _pending.get(key, 0.0) + amount


def flush_if_due(**_: object) -> None:
    """Flush if ``METRICS_FLUSH_SECONDS`` have passed since the last flush, in a process
    without a flusher thread (after each web request: ``request_finished``)."""
    if _flusher is not None and _flusher.is_alive():
        return  # the thread writes them
    if _pending and time.monotonic() - _last_flush >= conf.get().METRICS_FLUSH_SECONDS:
        flush()


def flush(*, quiet: bool = False) -> int:
    """Add what this process counted to the database now; return how many series.

    Never raises: counts that could not be written are kept for the next flush (and
    logged, unless ``quiet``: at exit, when the database may be gone).
    """
    global _last_flush, _pending
    with _lock:
        batch, _pending = _pending, {}
        _last_flush = time.monotonic()
    if not batch:
        return 0
    try:
        _write(sorted(batch.items()))  # one order in every process: no deadlock
    except Exception:
        if quiet:
            return 0
        logger.warning(
            "could not store %d metric series; kept for later", len(batch), exc_info=True
        )
        with _lock:
            for key, amount in batch.items():
                _pending[key] = _pending.get(key, 0.0) + amount
        return 0
    return len(batch)


def _write(items: Iterable[tuple[tuple[str, str], float]]) -> None:
    with transaction.atomic():
        for (name, labels), amount in items:
            rows = MetricTally.objects.filter(name=name, labels=labels)
            if rows.update(value=F("value") + amount):
                continue
            try:
                with transaction.atomic():
                    MetricTally.objects.create(name=name, labels=labels, value=amount)
            except IntegrityError:  # another process created the row meanwhile
                rows.update(value=F("value") + amount)


request_finished.connect(flush_if_due, dispatch_uid="workflows.tally")
atexit.register(lambda: flush(quiet=True))


def start_flusher(*, forked: bool = False) -> None:
    """Flush every ``METRICS_FLUSH_SECONDS`` from a daemon thread (once per process).

    ``forked``: in a process just forked, whose copy of the parent's counts is the
    parent's to write, not its own.
    """
    global _flusher
    if forked:
        forget()
    if _flusher is not None and _flusher.is_alive():
        return
    _flusher = threading.Thread(target=_flush_forever, name="workflows-metrics", daemon=True)
    _flusher.start()


def _flush_forever() -> None:
    while True:
        time.sleep(max(conf.get().METRICS_FLUSH_SECONDS, 0.1))
        flush()
        # This thread's own connection: not left open between flushes.
        db.connections.close_all()


def forget() -> None:
    """Drop what this process counted and has not flushed."""
    with _lock:
        _pending.clear()


def pending() -> dict[tuple[str, str], float]:
    """A copy of what this process counted and has not flushed (for tests)."""
    with _lock:
        return dict(_pending)
