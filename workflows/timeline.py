"""The timeline of a run: where each step sits on a shared time axis.

Used by the admin (an HTML picture) and by ``show_run`` (a text picture), so both show
the same thing: one bar per step, from its start to its end (or to now while it is
still sleeping, waiting or retrying). A step its run left behind unfinished (the run was
cancelled, or timed out, while the step slept or waited) is not going on any more: its
bar ends with the run, and it is shown ``cancelled`` (or ``interrupted``).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from workflows import matching, slots
from workflows.models import (
    RunStatus,
    StepKind,
    StepResult,
    StepStatus,
    Wait,
    WaitKind,
    WorkflowRun,
)

#: One letter per kind, for the text timeline and the picture's legend.
KIND_MARKS = {
    StepKind.RUN: "R",
    StepKind.SEND_EVENT: "E",
    StepKind.SLEEP: "S",
    StepKind.INVOKE: "I",
    StepKind.WAIT_FOR_EVENT: "W",
    StepKind.PARALLEL: "P",
    StepKind.PATCH: "p",
}
#: A bar is never narrower than this (in percent), so an instant step stays visible.
MIN_WIDTH_PCT = 0.4


@dataclass
class Row:
    """One step placed on the axis."""

    step: StepResult
    start: float
    """Seconds from the start of the axis."""
    duration: float | None
    """Seconds; ``None`` while the step is not finished."""
    left_pct: float
    width_pct: float
    tries: int
    """How many times the step body was tried (1 unless it was retried)."""
    open: bool
    """Still going on (sleeping, waiting or retrying): the bar ends at now."""
    status: str = ""
    """The status shown: the step's, or what its run's end made of it (:func:`status`)."""

    @property
    def start_label(self) -> str:
        """The start as an offset from the axis origin, e.g. ``+1.2s``."""
        return "+" + format_seconds(self.start)

    @property
    def duration_label(self) -> str:
        """How long the step took, to the millisecond (``…`` while it goes on)."""
        return "…" if self.duration is None else format_precise(self.duration)

    @property
    def mark(self) -> str:
        """One letter for the step's kind."""
        return KIND_MARKS.get(self.step.kind, "?")


@dataclass
class Timeline:
    """The rows of a run's steps and the axis they share."""

    origin: datetime
    span: float
    """Seconds covered by the axis (at least a millisecond)."""
    rows: list[Row] = field(default_factory=list)

    def ticks(self, count: int = 5) -> list[tuple[float, str]]:
        """``count + 1`` evenly spaced (percent, label) marks of the axis."""
        return [
            (100 * i / count, "+" + format_seconds(self.span * i / count)) for i in range(count + 1)
        ]


def build(run: WorkflowRun, steps: Sequence[StepResult], now: datetime | None = None) -> Timeline:
    """Place ``steps`` (in position order) of ``run`` on one axis."""
    now = now or timezone.now()
    starts = [s.started_at for s in steps if s.started_at]
    origin = min([run.started_at or run.created_at, *starts])
    # A step of a finished run ended with the run at the latest.
    end_of_run = run.finished_at or now
    ends = [_end(s, end_of_run) for s in steps]
    last = max([run.finished_at or (now if not run.is_finished else origin), *ends, origin])
    span = max((last - origin).total_seconds(), 0.001)
    rows = []
    for step, end in zip(steps, ends, strict=True):
        start = ((step.started_at or origin) - origin).total_seconds()
        length = max((end - (step.started_at or origin)).total_seconds(), 0.0)
        left = 100 * start / span
        width = max(100 * length / span, MIN_WIDTH_PCT)
        rows.append(
            Row(
                step=step,
                start=start,
                duration=length if step.finished_at or run.is_finished else None,
                left_pct=round(min(left, 100 - MIN_WIDTH_PCT), 3),
                width_pct=round(min(width, 100 - min(left, 100 - MIN_WIDTH_PCT)), 3),
                tries=step.attempt + (0 if step.status == StepStatus.RETRYING else 1),
                open=step.finished_at is None and not run.is_finished,
                status=status(step, run),
            )
        )
    return Timeline(origin=origin, span=span, rows=rows)


def status(step: StepResult, run: WorkflowRun) -> str:
    """The status to show for ``step``: ``cancelled`` or ``interrupted`` if its run ended
    while the step was still going on (the step row keeps its last status)."""
    if step.finished_at is not None or not run.is_finished:
        return step.status
    return "cancelled" if run.status == RunStatus.CANCELLED else "interrupted"


def _end(step: StepResult, now: datetime) -> datetime:
    if step.finished_at:
        return step.finished_at
    # A step that is still going on (sleep, wait, retry backoff) lasts until now; a
    # sleep that will end later is drawn to its wake-up time when that is closer.
    return now if step.wake_at is None else max(min(step.wake_at, now), step.started_at)


def format_seconds(seconds: float | None) -> str:
    """A short human duration: ``850ms``, ``12.3s``, ``4m05s``, ``2h10m``, ``3d04h``."""
    if seconds is None:
        return "…"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_precise(seconds: float) -> str:
    """A duration to the millisecond: ``40ms``, ``12.345s``, ``4m05.123s``, ``2h10m05s``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.3f}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)}m{secs:06.3f}s"
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h{minutes:02d}m{int(secs):02d}s"


def text_bar(row: Row, width: int = 40) -> str:
    """The row as a fixed-width bar of characters: ``#`` done, ``~`` open, ``!`` failed,
    ``-`` cut short by its run's end."""
    begin = min(int(row.left_pct * width / 100), width - 1)
    length = max(1, round(row.width_pct * width / 100))
    if row.step.status == StepStatus.FAILED:
        fill = "!"
    elif row.open:
        fill = "~"
    else:
        fill = "#" if row.status == row.step.status else "-"
    body = (" " * begin + fill * length)[:width]
    return body.ljust(width)


# --- what a run waits for -----------------------------------------------------------
def describe_flow(run: WorkflowRun) -> list[str]:
    """The run's flow-control keys, and why it has not started if it is held back.

    E.g. ``concurrency group wf:sync:acme (limit 2, 2 running)``, ``throttle key
    sync:acme``, ``priority +120 s``, ``held: waiting for a slot of wf:sync:acme``.
    """
    lines: list[str] = []
    now = timezone.now()
    limits = dict(slots.limits_of(run.workflow_id, (run.slot_1, run.slot_2)))
    for group in (run.slot_1, run.slot_2):
        if not group:
            continue
        limit = limits.get(group)
        about = f"limit {limit}, {slots.running(group, now)} running" if limit else "no limit now"
        lines.append(f"concurrency group {group} ({about})")
    if run.throttle_key:
        lines.append(f"throttle key {run.throttle_key}")
    if run.priority:
        lines.append(
            f"priority {run.priority:+d} s (in line as if created {run.order_at:%H:%M:%S})"
        )
    if run.status == RunStatus.QUEUED and run.held_by.startswith(slots.FOR_SLOT):
        lines.append(f"held: waiting for a slot of {run.held_by.removeprefix(slots.FOR_SLOT)}")
    elif (
        run.status == RunStatus.QUEUED
        and run.wake_at
        and run.held_by.startswith(slots.FOR_THROTTLE)
    ):
        lines.append(f"held: throttled until {run.wake_at:%Y-%m-%d %H:%M:%S.%f %Z}")
    return lines


def describe_waits(run: WorkflowRun) -> list[str]:
    """One line per thing ``run`` waits for, and per event that would cancel it.

    E.g. ``event 'shop/order.paid' where data.orderId = "o1", until 2026-11-27 10:00``.
    """
    lines: list[str] = []
    if run.is_branch:
        lines.append(f"is branch {run.branch_index} of a step.parallel of run {run.parent_id}")
    waits = Wait.objects.filter(run=run).select_related("step", "child_run", "run__event")
    branches: list[Wait] = []
    for wait in waits.order_by("created_at", "pk"):
        until = f", until {wait.expires_at:%Y-%m-%d %H:%M:%S %Z}" if wait.expires_at else ""
        if wait.kind == WaitKind.PARALLEL:
            branches.append(wait)
            continue
        if wait.kind == WaitKind.INVOKE and wait.child_run is not None:
            child = wait.child_run
            lines.append(
                f"step {wait.step.step_id!r} waits for child run {child.pk} "
                f"({child.workflow_id}, {child.status}){until}"
            )
            continue
        condition = _condition(wait)
        if wait.kind == WaitKind.CANCEL:
            lines.append(f"cancelled by event {wait.event_name!r}{condition}{until}")
        else:
            lines.append(
                f"step {wait.step.step_id!r} waits for event {wait.event_name!r}{condition}{until}"
            )
    if branches:
        step = branches[0].step
        total = (step.output or {}).get("branches", len(branches))
        lines.append(
            f"step {step.step_id!r} waits for {len(branches)} of {total} parallel branches"
        )
    return lines


def _condition(wait: Wait) -> str:
    parts = []
    if wait.match:
        found, value = matching.lookup({"data": wait.run.event.data}, wait.match)
        shown = json.dumps(value, ensure_ascii=False)[:80] if found else "?"
        parts.append(f"{wait.match} = {shown}")
    if wait.expression:
        parts.append(f"if {wait.expression}")
    return (" where " + " and ".join(parts)) if parts else ""
