"""Schedules kept in the database, editable without a deploy (``from workflows import
schedules``).

Each slot of a schedule starts one run of its workflow with a ``workflows/cron`` event
whose ``data`` is ``{"workflow_id", "cron", "scheduled_at", "schedule_id", "payload"}``
(``payload``: the schedule's ``data``). The dispatcher fires them
(:mod:`workflows.firing`). Every function checks all of its input before it writes;
the admin actions and the ``list_schedules`` command call these same functions.

The ``cron=`` of a registered workflow is a schedule too (``source="code"``, id
``workflow:<workflow id>``): it can be paused, resumed and triggered here, but it is
changed or removed in the code.
"""

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from eventbus import bus, validation
from eventbus import conf as eventbus_conf
from eventbus.exceptions import EventError
from workflows import cron, firing, registry
from workflows.exceptions import (
    DuplicateScheduleError,
    ScheduleError,
    UnknownScheduleError,
    WorkflowDefinitionError,
)
from workflows.models import Schedule, ScheduleSource

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,199}$")


def create(
    schedule_id: str,
    *,
    workflow: Any,
    cron: str | list[str] | tuple[str, ...],
    data: Any = None,
    workspace: str | None = None,
) -> Schedule:
    """Create a schedule that starts ``workflow`` at each slot of ``cron``, from its next.

    ``cron`` is an entry or a list of them, as for ``@workflow(cron=…)``; ``data`` (any
    JSON, default ``{}``) is sent as ``payload``; ``workspace=None`` is the default one.
    A bad cron or zone raises :class:`WorkflowDefinitionError`, an unknown workflow
    :class:`UnknownWorkflowError`, a taken id :class:`DuplicateScheduleError`, bad data
    :class:`ScheduleError`; nothing is written then.
    """
    _check_id(schedule_id)
    wf = registry.get(workflow)
    entries = _entries(schedule_id, cron)
    data = _data(schedule_id, wf.id, entries, {} if data is None else data)
    space = bus.get_workspace(workspace)
    if Schedule.objects.filter(schedule_id=schedule_id).exists():
        raise DuplicateScheduleError(f"a schedule with the id {schedule_id!r} exists already")
    try:
        with transaction.atomic():
            return Schedule.objects.create(
                schedule_id=schedule_id,
                workflow_id=wf.id,
                cron="\n".join(entries),
                data=data,
                workspace=space,
                source=ScheduleSource.DATABASE,
                next_fire_at=firing.next_fire_at(entries),
            )
    except IntegrityError:
        raise DuplicateScheduleError(
            f"a schedule with the id {schedule_id!r} exists already"
        ) from None


def update(
    schedule_id: str,
    *,
    workflow: Any = None,
    cron: str | list[str] | tuple[str, ...] | None = None,
    data: Any = None,
) -> Schedule:
    """Change a database schedule's workflow, cron or data (those given).

    A changed cron starts at its next slot; a paused schedule stays paused. Errors as
    for :func:`create`.
    """
    row = _database_row(schedule_id, "changed")
    wf = registry.get(workflow if workflow is not None else row.workflow_id)
    entries = _entries(schedule_id, cron) if cron is not None else tuple(row.entries)
    payload = _data(schedule_id, wf.id, entries, row.data if data is None else data)
    fields: dict[str, Any] = {"workflow_id": wf.id, "data": payload, "cron": "\n".join(entries)}
    if fields["cron"] != row.cron and not row.paused:
        fields["next_fire_at"] = firing.next_fire_at(entries)
    Schedule.objects.filter(pk=row.pk).update(updated_at=timezone.now(), **fields)
    return get(schedule_id)


def pause(schedule_id: str) -> Schedule:
    """Pause a schedule: its slots do not fire until it is resumed (and never later)."""
    row = get(schedule_id)
    Schedule.objects.filter(pk=row.pk, paused=False).update(
        paused=True, next_fire_at=None, updated_at=timezone.now()
    )
    return get(schedule_id)


def resume(schedule_id: str) -> Schedule:
    """Resume a paused schedule from its next slot; the slots it missed never fire."""
    row = get(schedule_id)
    Schedule.objects.filter(pk=row.pk, paused=True).update(
        paused=False, next_fire_at=firing.next_fire_at(row.entries), updated_at=timezone.now()
    )
    return get(schedule_id)


def delete(schedule_id: str) -> None:
    """Remove a database schedule; its slots stop (a run it started goes on)."""
    row = _database_row(schedule_id, "deleted")
    Schedule.objects.filter(pk=row.pk).delete()


def trigger(schedule_id: str) -> str:
    """Start one run now, paused or not, with ``scheduled_at`` the time of the call.

    Returns the run's id. The slots of the schedule are not affected.
    """
    row = Schedule.objects.select_related("workspace").filter(schedule_id=schedule_id).first()
    if row is None:
        raise _unknown(schedule_id)
    registry.get(row.workflow_id)
    with transaction.atomic():
        key = f"cron:{row.schedule_id}:trigger:{uuid.uuid4().hex}"  # listed with its runs
        (run_id,) = firing.start_runs([(row, bus.now_ms(), key)])
    return run_id


def get(schedule_id: str) -> Schedule:
    """The schedule ``schedule_id`` (a ``cron=`` one is ``workflow:<workflow id>``)."""
    row = Schedule.objects.filter(schedule_id=schedule_id).first()
    if row is None:
        raise _unknown(schedule_id)
    return row


@dataclass(frozen=True)
class Listed:
    """One line of :func:`listing`."""

    schedule_id: str
    workflow_id: str
    entries: list[str]
    source: str
    workspace: str
    paused: bool
    next_fire_at: datetime | None


def listing() -> list[Listed]:
    """Every schedule, database and ``cron=`` ones, with its next fire time.

    A ``cron=`` that no dispatcher has stored yet is listed with the next slot the code
    gives it.
    """
    rows = {row.schedule_id: row for row in Schedule.objects.select_related("workspace")}
    found = [
        Listed(
            row.schedule_id,
            row.workflow_id,
            row.entries,
            row.source,
            row.workspace.slug,
            row.paused,
            row.next_fire_at,
        )
        for row in rows.values()
    ]
    for wf in registry.cron_workflows():
        sid = firing.code_schedule_id(wf.id)
        if sid not in rows:
            found.append(
                Listed(
                    sid,
                    wf.id,
                    list(wf.crons),
                    ScheduleSource.CODE,
                    eventbus_conf.get().DEFAULT_WORKSPACE,
                    False,
                    firing.next_fire_at(wf.crons),
                )
            )
    return sorted(found, key=lambda item: item.schedule_id)


def _unknown(schedule_id: Any) -> UnknownScheduleError:
    return UnknownScheduleError(
        f"no schedule has the id {schedule_id!r} (a workflow's cron= is "
        f"'{firing.CODE_PREFIX}<workflow id>')"
    )


def _database_row(schedule_id: str, what: str) -> Schedule:
    row = get(schedule_id)
    if row.source == ScheduleSource.CODE:
        raise ScheduleError(
            f"schedule {schedule_id!r} is the cron= of workflow {row.workflow_id!r}: it is "
            f"{what} in the code (it can be paused, resumed and triggered here)"
        )
    return row


def _check_id(schedule_id: Any) -> None:
    if not isinstance(schedule_id, str) or not _ID_RE.match(schedule_id):
        raise ScheduleError(
            f"schedule id {schedule_id!r} is invalid: use 1-200 characters of letters, "
            "digits and '_.-/', starting with a letter or digit"
        )


def _entries(schedule_id: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise WorkflowDefinitionError(
            f"schedule {schedule_id!r}: cron must be a cron entry such as '0 2 * * *' or a "
            f"non-empty list of them, got {value!r}"
        )
    for index, item in enumerate(items):
        try:
            cron.parse(item)
        except cron.CronError as exc:
            raise WorkflowDefinitionError(
                f"schedule {schedule_id!r}: cron[{index}]: {exc}"
            ) from None
    return tuple(dict.fromkeys(items))


def _data(schedule_id: str, workflow_id: str, entries: tuple[str, ...], data: Any) -> Any:
    """``data`` as stored, once it is known that every event of the schedule can carry it."""
    probe = {
        "workflow_id": workflow_id,
        "cron": max(entries, key=len),
        "scheduled_at": validation.MAX_TS_MS,
        "schedule_id": schedule_id,
        "payload": data,
    }
    try:
        spec = validation.event(firing.CRON_EVENT, probe, reserved_ok=True)
    except EventError as exc:
        raise ScheduleError(f"schedule {schedule_id!r}: data is refused: {exc}") from None
    return spec.data["payload"]
