"""Retention: deleting old finished runs in batches (``purge_runs``).

Events are kept: they are the history of what happened. Shared by the ``purge_runs``
command and tests; bad arguments raise :class:`~workflows.exceptions.ConsoleError`.
"""

from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

from django.db import models, transaction
from django.db.models import signals
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

    Each batch reads at most ``batch_size`` ids (oldest first) and deletes them in its
    own short transaction, so the table is never loaded into memory and locks stay
    short: a worker waits at most one batch for a row the purge holds. The next batch
    starts where the last one ended (by ``created_at``): the index is not walked again
    over the entries of the rows already deleted. Rows are deleted with set-based
    statements (the related rows through their foreign keys, see
    :func:`_delete_where`), not loaded as objects. Events are kept (they are the
    history of what happened); their ``source_run_id`` and ``source_step_id`` become
    empty. Expired ``idempotency`` values are deleted at the end.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConsoleError(f"batch_size must be a whole number of 1 or more, got {batch_size!r}")
    runs = purgeable_runs(older_than_days, statuses).order_by("created_at")
    deleted = 0
    since = None
    while True:
        page = runs if since is None else runs.filter(created_at__gte=since)
        rows = list(page.values_list("pk", "created_at")[:batch_size])
        if not rows:
            # Expired idempotency values go too (they no longer hold anything back).
            while gates.purge_idempotency(batch_size):
                pass
            return
        batch = [pk for pk, _ in rows]
        since = rows[-1][1]
        with transaction.atomic():
            # A run that was replayed or invoked keeps its replays and children: their
            # links are set to NULL, as the foreign keys say. The event bus knows runs
            # only by id: forget the ids of what is deleted.
            Event.objects.filter(source_run_id__in=batch).update(
                source_run_id=None, source_step_id=None
            )
            _delete_where(WorkflowRun, WorkflowRun._base_manager.filter(pk__in=batch))
        deleted += len(batch)
        yield deleted


def _delete_where(model: type[models.Model], rows: Any, depth: int = 0) -> None:
    """Delete ``rows`` (a queryset of ``model``) and what their foreign keys cascade to.

    What Django's ``QuerySet.delete()`` does, with one statement per relation instead of
    loading every row (and every step) as an object: ``CASCADE`` deletes the related
    rows first (recursively), ``SET_NULL`` empties the link, ``DO_NOTHING`` is left to
    the database. A relation of another kind (or a model with delete signals) falls
    back to ``delete()`` for this batch.
    """
    related = [rel for rel in model._meta.related_objects if not rel.many_to_many]
    plain = depth < 4 and all(
        rel.on_delete in (models.CASCADE, models.SET_NULL, models.DO_NOTHING) for rel in related
    )
    if (
        not plain
        or signals.pre_delete.has_listeners(model)
        or signals.post_delete.has_listeners(model)
    ):
        rows.delete()
        return
    keys = rows.values("pk")
    for rel in related:
        linked = rel.related_model._base_manager.filter(**{f"{rel.field.name}__in": keys})
        if rel.on_delete is models.CASCADE:
            _delete_where(rel.related_model, linked, depth + 1)
        elif rel.on_delete is models.SET_NULL:
            linked.update(**{rel.field.name: None})
    rows._raw_delete(rows.db)
