"""Retention: deleting old finished runs in batches (``purge_runs``).

Events are kept: they are the history of what happened. Shared by the ``purge_runs``
command and tests; bad arguments raise :class:`~workflows.exceptions.ConsoleError`.
"""

from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from eventbus.models import Event
from workflows import gates, services
from workflows.exceptions import ConsoleError
from workflows.models import TERMINAL_STATUSES, RunStatus, WorkflowRun

#: The largest age ``purge_runs`` takes, in days (a hundred years: older than anything).
MAX_AGE_DAYS = 36_500


def check_age_days(value: Any, what: str = "older_than_days") -> float:
    """``value`` if it is an age in days from 0 to :data:`MAX_AGE_DAYS`, else a ConsoleError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConsoleError(f"{what} must be a number, got {value!r}")
    if not 0 <= value <= MAX_AGE_DAYS:  # also false for NaN
        raise ConsoleError(f"{what} must be a number of days from 0 to {MAX_AGE_DAYS}, got {value}")
    return value


def purgeable_runs(older_than_days: float, statuses: Iterable[str] | None = None):
    """Finished runs created more than ``older_than_days`` ago with one of ``statuses``.

    Only finished statuses may be purged: deleting an active run would lose work.
    """
    check_age_days(older_than_days)
    terminal = sorted(TERMINAL_STATUSES)
    chosen = list(statuses) if statuses else terminal
    for status in chosen:
        if status in RunStatus.values and status not in terminal:
            raise ConsoleError(
                f"runs with status {status!r} are still active and cannot be purged; "
                f"purge one of: {', '.join(terminal)}"
            )
        services.parse_status(status, terminal)
    cutoff = timezone.now() - timedelta(days=older_than_days)
    return WorkflowRun.objects.finished().filter(status__in=chosen, created_at__lt=cutoff)


def purge_runs(
    older_than_days: float,
    statuses: Iterable[str] | None = None,
    batch_size: int = 500,
) -> Iterator[int]:
    """Delete purgeable runs (and their steps) in batches; yield the total after each.

    Each batch reads at most ``batch_size`` ids and deletes them in its own transaction,
    so the table is never loaded into memory and locks stay short. Events are kept (they
    are the history of what happened); their ``source_run_id`` and ``source_step_id``
    become empty. Expired ``idempotency`` values are deleted at the end.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConsoleError(f"batch_size must be a whole number of 1 or more, got {batch_size!r}")
    runs = purgeable_runs(older_than_days, statuses)
    deleted = 0
    while True:
        batch = list(runs.order_by("created_at").values_list("pk", flat=True)[:batch_size])
        if not batch:
            # Expired idempotency values go too (they no longer hold anything back).
            while gates.purge_idempotency(batch_size):
                pass
            return
        with transaction.atomic():
            # A run that was replayed or invoked keeps its replays and children: their
            # links are set to NULL by the foreign keys, not deleted with it. The event
            # bus knows runs only by id: forget the ids of what is deleted.
            Event.objects.filter(source_run_id__in=batch).update(
                source_run_id=None, source_step_id=None
            )
            WorkflowRun.objects.filter(pk__in=batch).delete()
        deleted += len(batch)
        yield deleted
