"""Typed settings of the workflow engine, read from ``settings.WORKFLOWS`` when used."""

from dataclasses import dataclass, fields

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class WorkflowsSettings:
    """Tuning of the engine; override any of them in ``WORKFLOWS``."""

    #: Seconds a worker owns a run it claimed; a heartbeat renews it while it runs.
    #: A run whose worker died is taken over once this has passed.
    LEASE_SECONDS: float = 30.0
    #: Seconds between lease renewals of a running run.
    HEARTBEAT_SECONDS: float = 10.0
    #: Seconds after which a queued run that no worker claimed is rung again (its
    #: message may have been lost, e.g. a broker restarted empty).
    RING_TIMEOUT_SECONDS: float = 30.0
    #: Wake-ups and deferred events due within this many seconds are sent to the broker
    #: with an ``eta`` (so they run on its clock); later ones wait in the database until
    #: a dispatcher pass finds them this close. A worker holds the messages of this
    #: window in memory. Keep it well below the broker's redelivery limit (Redis
    #: ``visibility_timeout``) and well above ``DISPATCH_INTERVAL_SECONDS``.
    ETA_HORIZON_SECONDS: float = 10.0
    #: Seconds between two passes of the dispatcher.
    DISPATCH_INTERVAL_SECONDS: float = 0.25
    #: Rows the dispatcher handles per query.
    DISPATCH_BATCH: int = 500
    #: Start a dispatcher thread inside every Celery worker.
    DISPATCHER_IN_WORKER: bool = True
    #: Default ``retries`` of ``@workflow``.
    DEFAULT_RETRIES: int = 3
    #: First retry delay in seconds; each later one doubles, with jitter.
    RETRY_BASE_SECONDS: float = 1.0
    #: Longest retry delay in seconds.
    RETRY_MAX_SECONDS: float = 600.0
    #: Largest encoded output of a step or a run, in bytes.
    MAX_OUTPUT_BYTES: int = 4 * 1024 * 1024
    #: Largest total of the encoded outputs of a run's ``step.run`` steps, in bytes: a run
    #: replays its memos on every resumption, so this bounds what a worker holds.
    MAX_RUN_OUTPUT_BYTES: int = 32 * 1024 * 1024
    #: Most runs one message asks a worker to execute in turn. Runs rung together (a
    #: fan-out, a dispatcher pass) share messages, which saves the broker and worker
    #: overhead per run; 1 sends one message per run.
    RING_BATCH_SIZE: int = 20
    #: Seconds a task executes the runs handed a concurrency slot by the runs it
    #: executed (without a message each): once it has run this long, the rest are rung
    #: like any other, so a busy key's line never holds a process for long while other
    #: messages wait. 0: every run handed a slot is rung.
    HAND_ON_SECONDS: float = 0.5
    #: Deepest chain of ``step.invoke``: a run started by an event has depth 0, its
    #: invoked child 1, … An invoke that would go deeper fails with
    #: ``InvokeDepthExceeded`` (a workflow that invokes itself cannot run away).
    MAX_INVOKE_DEPTH: int = 50
    #: Seconds an ``idempotency`` value keeps another event with the same value from
    #: starting a run of the same workflow in the same workspace.
    IDEMPOTENCY_WINDOW_SECONDS: float = 24 * 3600.0
    #: Celery queue of the engine's tasks (``None``: the app's default queue).
    QUEUE: str | None = None
    #: Serve ``GET /metrics`` to anyone; by default only to logged-in staff.
    METRICS_PUBLIC: bool = False
    #: A secret that also opens ``GET /metrics`` to a request bearing it
    #: (``Authorization: Bearer <token>``, what Prometheus' ``authorization`` sends);
    #: empty: none does.
    METRICS_TOKEN: str = ""
    #: Seconds a process keeps its metric counts before adding them to the database
    #: (a process killed loses at most this much of its counts); 0 writes at once.
    METRICS_FLUSH_SECONDS: float = 5.0
    #: Prepare the statements the engine runs outside a transaction for every run and
    #: step (the claim, its flow-control question, a step's memo; PostgreSQL with
    #: psycopg 3), so PostgreSQL plans each once per connection instead of every time.
    #: ``None``: yes, unless ``DATABASES['default']['DISABLE_SERVER_SIDE_CURSORS']`` is
    #: true (Django's setting for a pooler in transaction mode, where a prepared
    #: statement may be missing on the next server session). ``True`` behind PgBouncer
    #: 1.21 or later with ``max_prepared_statements`` set; ``False``: never.
    PREPARED_STATEMENTS: bool | None = None


_KNOWN = frozenset(f.name for f in fields(WorkflowsSettings))
#: The last ``WORKFLOWS`` seen, a copy of it, and its settings: ``get`` is called on
#: every step, so it rebuilds them only when ``WORKFLOWS`` changed.
_last: tuple[dict, dict, WorkflowsSettings] | None = None


def get() -> WorkflowsSettings:
    """Return the current settings (read on every call, so tests may override them)."""
    global _last
    overrides = getattr(django_settings, "WORKFLOWS", {}) or {}
    last = _last
    if last is not None and last[0] is overrides and last[1] == overrides:
        return last[2]
    unknown = set(overrides) - _KNOWN
    if unknown:
        raise ImproperlyConfigured(
            f"WORKFLOWS has unknown keys {sorted(unknown)}; allowed: {sorted(_KNOWN)}"
        )
    current = WorkflowsSettings(**overrides)
    _last = (overrides, dict(overrides), current)
    return current
