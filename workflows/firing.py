"""Firing schedules: each slot of each :class:`~workflows.models.Schedule` starts one run.

The dispatcher calls :func:`fire_due` on every pass. One indexed query finds the rows
whose ``next_fire_at`` has come (nothing else is read when none has); each due row is
claimed by a conditional ``UPDATE`` that moves ``next_fire_at`` to its following slot,
and the slot's ``workflows/cron`` event is stored under the idempotency key
``cron:<schedule_id>:<slot ms>``. The unique (workspace, idempotency key) constraint of
events is what makes a slot start one run, whichever dispatcher gets there, with or
without row locks; only the dispatcher whose event is new starts the run, in the same
transaction. The next slot is computed once per fired slot, never per pass.

Slots missed while no dispatcher ran: only the latest one fires. The ``cron=`` of the
registered workflows are kept as rows too (``source="code"``, id ``workflow:<id>``):
:func:`reconcile` brings them in line with the code, writing only what changed.
"""

import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from eventbus import bus, validation
from eventbus.models import Event
from workflows import cron, lifecycle, registry
from workflows.exceptions import UnknownWorkflowError
from workflows.models import Schedule, ScheduleSource

logger = logging.getLogger("workflows.schedules")

#: The name of the trigger event of a scheduled run (engine-owned).
CRON_EVENT = "workflows/cron"
#: The ``schedule_id`` of the row that holds a workflow's ``cron=``: this prefix + its id.
CODE_PREFIX = "workflow:"

#: The registry generation the code schedules were last reconciled with, in this process.
_reconciled: int | None = None


def code_schedule_id(workflow_id: str) -> str:
    """The ``schedule_id`` of the row of a workflow's ``cron=``."""
    return CODE_PREFIX + workflow_id


def slot_key(schedule_id: str, slot_ms: int) -> str:
    """The idempotency key of the event of one slot: one event, so one run, per slot."""
    return f"cron:{schedule_id}:{slot_ms}"


def first_slot(entries: Iterable[str], after_ms: int) -> int | None:
    """The earliest slot of any of ``entries`` strictly after ``after_ms``."""
    slots = [cron.next_slot(cron.parse(entry), after_ms) for entry in entries]
    found = [slot for slot in slots if slot is not None]
    return min(found) if found else None


def next_fire_at(entries: Iterable[str], now: datetime | None = None) -> datetime | None:
    """When a new, resumed or changed schedule fires first: its next slot after ``now``."""
    now = now or timezone.now()
    slot = first_slot(entries, cron.to_ms(now))
    return None if slot is None else cron.from_ms(slot)


def event_spec(schedule: Schedule, slot_ms: int, *, key: str | None) -> validation.EventSpec:
    """The ``workflows/cron`` event of ``schedule`` for the slot ``slot_ms``."""
    entries = schedule.entries
    entry = next((e for e in entries if cron.matches(cron.parse(e), slot_ms)), entries[0])
    data: dict[str, Any] = {
        "workflow_id": schedule.workflow_id,
        "cron": entry,
        "scheduled_at": slot_ms,
    }
    if schedule.source == ScheduleSource.DATABASE:
        data["schedule_id"] = schedule.schedule_id
        data["payload"] = schedule.data
    return validation.event(CRON_EVENT, data, ts=slot_ms, id=key, reserved_ok=True)


def start_runs(slots: Sequence[tuple[Schedule, int, str | None]]) -> list[str]:
    """Store the events of ``(schedule, slot ms, key)`` and start a run for each new one.

    In the caller's transaction. An event whose key is taken (another dispatcher fired
    that slot) starts nothing. Returns the ids of the runs started.
    """
    by_workspace: dict[Any, list[tuple[Schedule, int, str | None]]] = {}
    for item in slots:
        by_workspace.setdefault(item[0].workspace_id, []).append(item)
    started: list[str] = []
    for items in by_workspace.values():
        workflows = [registry.get(schedule.workflow_id) for schedule, _, _ in items]
        ids = [uuid.uuid4() for _ in items]
        specs = [event_spec(schedule, slot, key=key) for schedule, slot, key in items]
        # Addressed to one run each (as an invoke's trigger): not delivered to subscribers.
        stored = bus.store(specs, items[0][0].workspace, event_ids=ids, deliver=False)
        fresh = {str(i) for i, got in zip(ids, stored, strict=True) if str(i) == got}
        events = Event.objects.in_bulk(list(fresh))
        runs = [
            (lifecycle.new_run(events[uuid.UUID(event_id)], wf), wf)
            for event_id, wf in zip(stored, workflows, strict=True)
            if event_id in fresh
        ]
        started += [str(run.pk) for run in lifecycle.start(runs, skip_repeats=True)]
    return started


def fire_due(limit: int, now: datetime | None = None) -> int:
    """Fire up to ``limit`` due schedules (one slot each); return how many were claimed."""
    now = now or timezone.now()
    if not Schedule.objects.due(now).exists():
        return 0  # the common pass: one indexed query, no transaction, no lock
    with transaction.atomic():
        due = Schedule.objects.due(now).order_by("next_fire_at").select_related("workspace")
        if connection.features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True, of=("self",))
        rows = list(due[:limit])
        slots: list[tuple[Schedule, int, str | None]] = []
        for row in rows:
            slot, following = _plan(row, cron.to_ms(now))
            fire = slot is not None and _known(row)
            moved = {"last_fired_at": cron.from_ms(slot)} if fire else {}
            # The claim: only the dispatcher that moves next_fire_at on fires the slot.
            claimed = Schedule.objects.filter(pk=row.pk, next_fire_at=row.next_fire_at).update(
                next_fire_at=None if following is None else cron.from_ms(following), **moved
            )
            if claimed and fire:
                slots.append((row, slot, slot_key(row.schedule_id, slot)))
        start_runs(slots)
    return len(rows)


def _plan(row: Schedule, now_ms: int) -> tuple[int | None, int | None]:
    """The slot to fire now and the one after it (``None`` for a row that cannot fire)."""
    try:
        crons = [cron.parse(entry) for entry in row.entries]
    except cron.CronError:
        logger.exception("schedule %s: its cron no longer parses; stopped", row.schedule_id)
        return None, None
    slot = cron.to_ms(row.next_fire_at)
    following = first_slot(row.entries, slot)
    if following is not None and following <= now_ms:
        # Slots were missed (no dispatcher ran): fire only the latest of them.
        missed = [cron.latest_slot(each, now_ms) for each in crons]
        slot = max(s for s in missed if s is not None)
        following = first_slot(row.entries, slot)
    return slot, following


def _known(row: Schedule) -> bool:
    try:
        registry.get(row.workflow_id)
    except UnknownWorkflowError:
        logger.warning(
            "schedule %s: workflow %r is not registered in this process; slot skipped",
            row.schedule_id,
            row.workflow_id,
        )
        return False
    return True


def reconcile(now: datetime | None = None) -> int:
    """Make the ``source="code"`` rows match the registered ``cron=``; return the writes.

    One query when nothing changed. A new or changed ``cron=`` starts at its next slot
    (a paused one stays paused); a removed one is deleted, so its slots stop.
    """
    desired = {
        code_schedule_id(wf.id): (wf.id, "\n".join(wf.crons)) for wf in registry.cron_workflows()
    }
    rows = {
        row.schedule_id: row
        for row in Schedule.objects.filter(source=ScheduleSource.CODE).only(
            "pk", "schedule_id", "workflow_id", "cron", "paused"
        )
    }
    stale = [sid for sid in rows if sid not in desired]
    changed = [sid for sid, (_, c) in desired.items() if sid in rows and rows[sid].cron != c]
    new = [sid for sid in desired if sid not in rows]
    if not (stale or changed or new):
        return 0
    now = now or timezone.now()
    with transaction.atomic():
        if stale:
            Schedule.objects.filter(source=ScheduleSource.CODE, schedule_id__in=stale).delete()
        for sid in changed:
            row = rows[sid]
            entries = desired[sid][1]
            Schedule.objects.filter(pk=row.pk, cron=row.cron).update(
                cron=entries,
                next_fire_at=None if row.paused else next_fire_at(entries.split("\n"), now),
            )
        if new:
            workspace = bus.get_workspace(None)
            Schedule.objects.bulk_create(
                [
                    Schedule(
                        schedule_id=sid,
                        workflow_id=desired[sid][0],
                        cron=desired[sid][1],
                        workspace=workspace,
                        source=ScheduleSource.CODE,
                        next_fire_at=next_fire_at(desired[sid][1].split("\n"), now),
                    )
                    for sid in new
                ],
                ignore_conflicts=True,  # another process starting at the same time
            )
    logger.info(
        "cron schedules reconciled: %d new, %d changed, %d removed",
        len(new),
        len(changed),
        len(stale),
    )
    return len(stale) + len(changed) + len(new)


def ensure_reconciled() -> None:
    """Reconcile once per process, and again whenever the registry changes."""
    global _reconciled
    generation = registry.generation
    if _reconciled != generation:
        reconcile()
        _reconciled = generation
