"""Concurrency slots and throttles, enforced by the database when a run is claimed.

A run of a workflow with ``concurrency`` is stored with the group of each limit
(``slot_1``, ``slot_2``: the workflow or pool and the key's value); one with a
``throttle`` with its throttle key. The claim of such a run (see
:func:`workflows.runstore.claim`) asks, in its transaction:

- **Throttle** (first starts only): the run reserves the next start of its key by the
  generic cell rate algorithm, on one row per key (:class:`~workflows.models.
  ThrottleState`, locked for the update). A reservation in the future holds the run
  ``queued`` with a wake-up time at it; the run then starts without asking again.
- **Concurrency**: each group is locked (a transaction-level advisory lock on
  PostgreSQL; SQLite runs one writing transaction at a time) and its running runs with
  a live lease counted; the run starts only if every group has room.

A run held back stays ``queued`` with no ``due_at``, so neither the dispatcher nor a
worker spends anything on it: whoever frees a slot (a run that ends, sleeps, waits or
is cancelled) hands it to the next run in line of that group (:func:`hand_over`), by
``order_at`` (creation time less the priority). Claims, hand-overs and the creation of
runs of a group take its lock in turn, so a run put back in line is always seen by the
run that frees the slot next, however the two interleave. The first run in line also
gets a ``due_at`` one lease ahead, as a backstop should a bell be lost. A worker that
died frees its slot when its lease expires (its run is then taken over, or counts no
more).
"""

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from workflows import conf, doorbell, flowcontrol, registry, runstore_pg
from workflows.exceptions import UnknownWorkflowError
from workflows.models import SHAPING_FIELDS, RunStatus, ThrottleState, WorkflowRun, not_paused

#: ``held_by`` of a run waiting for a slot: this prefix and the group.
FOR_SLOT = "concurrency "
#: ``held_by`` of a run whose first start the throttle put later: this prefix and key.
FOR_THROTTLE = "throttle "
#: The fields the claim reads from a run that flow control may hold back.
FIELDS = SHAPING_FIELDS
#: The runs this process handed a slot to lately, by id: their :data:`FIELDS` as the
#: hand-over read them, so that claiming one here needs no question first (a hint: the
#: claim checks everything again). Forgotten past ``_HINTS_MAX``.
_hints: dict[str, dict[str, Any]] = {}
_HINTS_MAX = 10_000


@dataclass(frozen=True)
class Held:
    """Why a run may not start now: ``held_by`` text, and when it may (a throttle)."""

    reason: str
    until: datetime | None = None
    group: str | None = None
    roomy: tuple[str, ...] = ()


def limits_of(workflow_id: str, groups: Sequence[str]) -> list[tuple[str, int]]:
    """The (group, limit) pairs of a run's stored groups, by the code deployed now."""
    wf = _workflow(workflow_id)
    entries = wf.flow.concurrency if wf is not None else ()
    return [
        (group, entries[index].limit)
        for index, group in enumerate(groups)
        if group and index < len(entries)
    ]


def asks_throttle(run: dict[str, Any]) -> bool:
    """Whether the claim of ``run`` (its :data:`FIELDS`) asks a throttle: its first
    start, under one."""
    return bool(run["throttle_key"]) and run["started_at"] is None


def throttled(
    run_id: Any, run: dict[str, Any], now: datetime, *, relax: bool = False
) -> Held | None:
    """In the claim's transaction: ``Held`` if a throttle puts the run's first start
    later (its start is reserved then), else ``None``."""
    if not asks_throttle(run):
        return None
    if relax:
        runstore_pg.relax()
    return _throttle(run_id, run, now)


def full(run_id: Any, limits: Sequence[tuple[str, int]], now: datetime) -> Held | None:
    """Under the groups' locks: ``Held`` naming the first group without room (and those
    with room, to hand on), or ``None`` if every group has room."""
    full_group = None
    roomy = []
    for group, limit in limits:
        if running(group, now, exclude=run_id) >= limit:
            full_group = full_group or group
        else:
            roomy.append(group)
    if full_group is None:
        return None
    return Held(FOR_SLOT + full_group, group=full_group, roomy=tuple(roomy))


def hold(run_id: Any, run: dict[str, Any], held: Held, now: datetime) -> bool:
    """Put a run that may not start back in line, ``queued``; whether it was still there.

    A throttled run wakes at its reserved start. A run waiting for a slot has no
    ``due_at`` unless it is the first in line of its group (a backstop for a lost bell).
    Groups that had room for it are handed to the next run in line.
    """
    if held.until is not None:
        wake_at = due_at = held.until
    else:
        wake_at, due_at = None, None
        if not _waiting_ahead(held.group, run["order_at"], run_id):
            due_at = now + timedelta(seconds=conf.get().LEASE_SECONDS)
    fields: dict[str, Any] = {}
    if run["status"] == RunStatus.RUNNING:  # a takeover that found no room: that try was lost
        fields["lost_executions"] = F("lost_executions") + 1
    moved = (
        WorkflowRun.objects.filter(
            pk=run_id,
            status__in=[RunStatus.QUEUED, RunStatus.SLEEPING, RunStatus.WAITING, RunStatus.RUNNING],
        )
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
        .update(
            status=RunStatus.QUEUED,
            wake_at=wake_at,
            due_at=due_at,
            held_by=held.reason[:400],
            lease_owner=None,
            lease_expires_at=None,
            **fields,
        )
    )
    if moved and held.until is not None:
        doorbell.ring_on_commit([run_id], at=held.until)
    if moved and held.roomy:
        # It could have had those slots: the next in line after it may use them.
        hand_over(held.roomy, now, after=run["order_at"], skip=run_id)
    return bool(moved)


def hand_over(
    groups: Iterable[str],
    now: datetime | None = None,
    *,
    after: datetime | None = None,
    skip: Any = None,
) -> list[Any]:
    """A slot of each group is free: ring the next run in line for it (in the caller's
    transaction, once it commits); return the runs rung.

    The run handed a slot leaves the line (``held_by`` is cleared; its ``due_at`` is a
    ring timeout ahead, should the bell be lost). Its row is locked and one locked by
    another hand-over is skipped, so two slots freed at once go to two runs.
    """
    with transaction.atomic(savepoint=False):  # the row locks need a transaction
        return _hand_over(groups, now or timezone.now(), after, skip)


def _hand_over(
    groups: Iterable[str], now: datetime, after: datetime | None, skip: Any
) -> list[Any]:
    locks = connection.features.has_select_for_update_skip_locked
    chosen: list[Any] = [] if skip is None else [skip]
    named = list(dict.fromkeys(g for g in groups if g))
    due = now + timedelta(seconds=conf.get().RING_TIMEOUT_SECONDS)
    line = one_line(named)
    if line is not None:
        # The common case (one limit, kept in slot_1): lock, pick and update, one trip.
        head = runstore_pg.hand_over(line, now, due, skip, after)
        return [] if head is None else [ring_handed(head)]
    # In turn with the claims of these groups: a claim that counted this run as running
    # and is putting its run back in line commits first, so that run is seen here.
    lock(named)
    for group in named:
        best = None
        for column in _columns(group):
            line = (
                _held_in(group, column)
                .filter(Q(wake_at__isnull=True) | Q(wake_at__lte=now), not_paused())
                .exclude(pk__in=chosen)
            )
            if after is not None:
                line = line.filter(order_at__gte=after)
            if locks:
                line = line.select_for_update(skip_locked=True, of=("self",))
            head = line.order_by("order_at", "pk").values_list("pk", "order_at").first()
            if head is not None and (best is None or head[1] < best[1]):
                best = head
        if best is not None:
            chosen.append(best[0])
    chosen = [run_id for run_id in chosen if run_id != skip]
    if chosen:
        WorkflowRun.objects.filter(pk__in=chosen, status=RunStatus.QUEUED).update(
            due_at=due, held_by=""
        )
        doorbell.ring_on_commit(chosen, handed=True)
    return chosen


@dataclass(frozen=True)
class Line:
    """One group's line of runs waiting for a slot, kept in ``slot_1``: a hand-over of
    its slot is one statement on PostgreSQL (see ``runstore_pg.hand_over``). ``waiting``:
    how the ``held_by`` of a run in the line begins."""

    group: str
    lock_key: int
    waiting: str = FOR_SLOT


def one_line(groups: Iterable[str]) -> Line | None:
    """On PostgreSQL, the one line a run of ``groups`` hands its slot to, if it has one
    group and that group is kept in ``slot_1`` only (one limit: the common case); else
    ``None`` (several lines: :func:`hand_over` asks each)."""
    named = list(dict.fromkeys(g for g in groups if g))
    if connection.vendor != "postgresql" or len(named) != 1 or _columns(named[0]) != ("slot_1",):
        return None
    return Line(named[0], _lock_key(named[0]))


def ring_handed(head: dict[str, Any]) -> Any:
    """Ring the run a hand-over chose (once the caller's transaction commits, or now
    outside one), keeping what it read of it (``id`` and :data:`FIELDS`) until the run
    is claimed here (:func:`handed_hint`); return its id."""
    remember_handed(head)
    doorbell.ring_on_commit([head["id"]], handed=True)
    return head["id"]


def remember_handed(head: dict[str, Any]) -> None:
    """Keep what a hand-over read of the run it chose (``id`` and :data:`FIELDS`) until
    the run is claimed here (:func:`handed_hint`), without ringing it."""
    if len(_hints) >= _HINTS_MAX:
        _hints.clear()
    _hints[str(head["id"])] = head


def handed_hint(run_id: Any) -> dict[str, Any] | None:
    """What this process's hand-over read of ``run_id`` (its :data:`FIELDS`), once: the
    claim of a run handed a slot here can then go straight to the groups' question."""
    return _hints.pop(str(run_id), None)


def line_up(runs: Sequence[WorkflowRun], now: datetime) -> set[Any]:
    """New runs in concurrency groups: which of them to hold back rather than ring.

    A group with a line already, or with every slot taken, holds its new runs back (they
    are rung as slots free up); otherwise as many as it has room for are rung. Called
    before the runs are stored, so the held ones are stored held.
    """
    grouped = [run for run in runs if run.slot_1]
    if not grouped:
        return set()
    room: dict[str, int] = {}
    lined: dict[str, bool] = {}
    # In turn with claims and hand-overs of these groups (until the caller commits): a
    # run that ends meanwhile then sees the new runs held, and hands its slot on.
    lock(
        group
        for run in grouped
        for group, _ in limits_of(run.workflow_id, (run.slot_1, run.slot_2))
    )
    for run in grouped:
        for group, limit in limits_of(run.workflow_id, (run.slot_1, run.slot_2)):
            if group not in room:
                lined[group] = _waiting_ahead(group, None, None)
                room[group] = 0 if lined[group] else max(0, limit - running(group, now, rung=True))
    held = set()
    backstop = now + timedelta(seconds=conf.get().LEASE_SECONDS)
    for run in sorted(grouped, key=lambda r: (r.order_at, str(r.pk))):
        groups = [g for g, _ in limits_of(run.workflow_id, (run.slot_1, run.slot_2))]
        full = next((g for g in groups if room[g] <= 0), None)
        if full is None:
            for group in groups:
                room[group] -= 1
            continue
        held.add(run.pk)
        run.held_by = FOR_SLOT + full
        run.due_at = None if lined[full] else backstop  # the first in line keeps a backstop
        lined[full] = True
    return held


def running(group: str, now: datetime, *, exclude: Any = None, rung: bool = False) -> int:
    """How many runs of ``group`` execute now (running, with a live lease); with
    ``rung``, also the queued ones rung for a slot and on their way to a worker."""
    counted = Q(status=RunStatus.RUNNING, lease_expires_at__gte=now)
    if rung:
        counted |= Q(status=RunStatus.QUEUED, held_by="")
    runs = WorkflowRun.objects.filter(Q(slot_1=group) | Q(slot_2=group)).filter(counted)
    if exclude is not None:
        runs = runs.exclude(pk=exclude)
    return runs.count()


def lock(groups: Iterable[str], *, relax: bool = False) -> None:
    """Take each group's lock until the transaction ends (PostgreSQL), in one order;
    with ``relax``, let the transaction commit without waiting for the disk too."""
    if connection.vendor != "postgresql":
        return  # SQLite: one writing transaction at a time already orders claims
    keys = lock_keys(groups)
    if not keys and not relax:
        return
    locks = ", ".join(["pg_advisory_xact_lock(%s)"] * len(keys)) or "1"
    prefix = runstore_pg.RELAXED if relax else ""
    with connection.cursor() as cursor:
        cursor.execute(f"{prefix}SELECT {locks}", keys)


def lock_keys(groups: Iterable[str]) -> list[int]:
    """The advisory lock keys of ``groups``, in the one order every locker takes them."""
    return sorted({_lock_key(group) for group in groups})


def _lock_key(group: str) -> int:
    digest = hashlib.sha1(f"workflows-slot\x00{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _held_in(group: str, column: str) -> Any:
    """The queued runs waiting for a slot whose ``column`` (``slot_1``/``slot_2``) is ``group``."""
    return WorkflowRun.objects.filter(
        **{column: group}, status=RunStatus.QUEUED, held_by__startswith=FOR_SLOT
    )


def _waiting_ahead(group: str | None, order_at: datetime | None, run_id: Any) -> bool:
    """Whether a run waits for a slot of ``group`` ahead of ``order_at`` (any, if None)."""
    if group is None:
        return False
    for column in _columns(group):
        line = _held_in(group, column)
        if order_at is not None:
            line = line.filter(order_at__lt=order_at)
        if run_id is not None:
            line = line.exclude(pk=run_id)
        if line.exists():
            return True
    return False


def _throttle(run_id: Any, run: dict[str, Any], now: datetime) -> Held | None:
    reserved = run["throttle_at"]
    if reserved is None:
        wf = _workflow(run["workflow_id"])
        throttle = wf.flow.throttle if wf is not None else None
        if throttle is None:
            return None  # the code no longer throttles it
        reserved = reserve(run["throttle_key"], throttle, now)
        WorkflowRun.objects.filter(pk=run_id).update(throttle_at=reserved)
    if reserved <= now:
        return None
    return Held(FOR_THROTTLE + run["throttle_key"], until=reserved)


def reserve(key: str, throttle: flowcontrol.Throttle, now: datetime) -> datetime:
    """Take the next first start of throttle ``key``; return when it may happen.

    GCRA: ``next_at`` is the key's theoretical arrival time; a start may come
    ``burst`` intervals before it, and each start moves it one interval on.
    """
    ThrottleState.objects.bulk_create([ThrottleState(key=key, next_at=now)], ignore_conflicts=True)
    state = ThrottleState.objects.select_for_update().get(key=key)
    interval = throttle.interval
    theoretical = max(state.next_at, now)
    allowed = max(theoretical - interval * throttle.burst, now)
    state.next_at = theoretical + interval
    state.save(update_fields=["next_at"])
    return allowed


def _columns(group: str) -> tuple[str, ...]:
    """Where runs of ``group`` may keep it: ``slot_2`` only for a second entry's group."""
    seconds = _second_owners()
    if any(group == owner or group.startswith(owner + ":") for owner in seconds):
        return ("slot_1", "slot_2")
    return ("slot_1",)


_owners: tuple[int, frozenset[str]] = (-1, frozenset())


def _second_owners() -> frozenset[str]:
    """The owners (``wf:<id>``, ``pool:<name>``) of second ``concurrency`` entries."""
    global _owners
    if _owners[0] != registry.generation:
        owners = set()
        for wf in registry.all_workflows():
            if len(wf.flow.concurrency) > 1:
                owners.add(wf.flow.concurrency[1].owner)
        _owners = (registry.generation, frozenset(owners))
    return _owners[1]


def _workflow(workflow_id: str) -> registry.Workflow | None:
    try:
        return registry.get(workflow_id)
    except UnknownWorkflowError:
        return None
