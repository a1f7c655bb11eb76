"""Runs of workflows and the memos of their steps.

The run statuses and the conditions over them (active, moving, terminal, runnable) are
defined here once; the run store, the dispatcher, the test driver and the partial
indexes all use these definitions.
"""

import uuid
from datetime import datetime
from typing import Any

from django.db import models
from django.db.models import Q
from django.utils import timezone

from workflows.models.pauses import PausedWorkflow


class RunStatus(models.TextChoices):
    """Where a run is in its life."""

    QUEUED = "queued", "Queued"
    """Waiting for a worker (``wake_at``, if set, is the earliest time to start)."""
    RUNNING = "running", "Running"
    """A worker holds its lease and executes its steps."""
    SLEEPING = "sleeping", "Sleeping"
    """Suspended by ``step.sleep`` until ``wake_at``; no worker is held."""
    WAITING = "waiting", "Waiting"
    """Suspended until a child run or an event arrives; no worker is held."""
    COMPLETED = "completed", "Completed"
    """The workflow returned; ``output`` holds its value."""
    FAILED = "failed", "Failed"
    """The workflow raised, or a step failed for good; ``error`` says why."""
    CANCELLED = "cancelled", "Cancelled"
    """Stopped by a cancellation; it runs no further step."""
    PAUSED = "paused", "Paused"
    """Its memos no longer fit the code (``on_nondeterminism="pause"``); ``error`` says
    where. No worker is held and nothing wakes it but ``resume_run`` (or a cancel)."""


#: Statuses from which a run never moves again.
TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
#: Statuses of runs the engine moves forward on its own: the dispatcher rings for them,
#: their timeouts apply, and they hold a concurrency slot. Every active status but paused.
MOVING_STATUSES = frozenset(
    {RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SLEEPING, RunStatus.WAITING}
)
#: ``MOVING_STATUSES`` as plain strings in a stable order (index conditions, SQL).
MOVING_VALUES = sorted(status.value for status in MOVING_STATUSES)
#: Statuses of runs that have not finished: moving ones, and paused ones (which a cancel
#: ends, and ``check_workflows`` checks, like any other unfinished run).
ACTIVE_STATUSES = MOVING_STATUSES | {RunStatus.PAUSED}
#: ``ACTIVE_STATUSES`` as plain strings in a stable order.
ACTIVE_VALUES = sorted(status.value for status in ACTIVE_STATUSES)


def runnable(now: datetime) -> Q:
    """The runs a worker may claim at ``now``.

    Queued runs that are due, sleeps and waits whose ``wake_at`` has come (a wait or an
    invoke timed out), and running runs whose worker stopped renewing the lease; none of
    a workflow paused in the run's workspace (:func:`not_paused`).
    """
    return (
        Q(status=RunStatus.QUEUED) & (Q(wake_at__isnull=True) | Q(wake_at__lte=now))
        | Q(status__in=[RunStatus.SLEEPING, RunStatus.WAITING], wake_at__lte=now)
        | Q(status=RunStatus.RUNNING, lease_expires_at__lt=now)
    ) & not_paused()


def unshaped(now: datetime) -> Q:
    """Runs no flow control can hold back at ``now``: in no concurrency group, and not
    facing a throttle (no throttle, already started once, or its start reserved)."""
    return Q(slot_1="") & (
        Q(throttle_key="") | Q(started_at__isnull=False) | Q(throttle_at__lte=now)
    )


#: The fields of a run that flow control may hold back which its claim reads (whether
#: a throttle asks, which groups and limits, where it stands in line).
SHAPING_FIELDS = (
    "workflow_id",
    "status",
    "started_at",
    "slot_1",
    "slot_2",
    "throttle_key",
    "throttle_at",
    "order_at",
)


def not_paused() -> Q:
    """Runs whose workflow is not paused in their workspace (nor everywhere).

    One lookup in the (small, usually empty) table of paused workflows, by its index.
    """
    paused = PausedWorkflow.objects.filter(
        Q(workspace__isnull=True) | Q(workspace=models.OuterRef("workspace")),
        workflow_id=models.OuterRef("workflow_id"),
    )
    return ~models.Exists(paused)


class StepKind(models.TextChoices):
    """Which ``ctx.step`` call recorded a memo."""

    RUN = "run", "run"
    SEND_EVENT = "send_event", "send_event"
    SLEEP = "sleep", "sleep"
    INVOKE = "invoke", "invoke"
    WAIT_FOR_EVENT = "wait_for_event", "wait_for_event"
    PARALLEL = "parallel", "parallel"
    PATCH = "patch", "patch"
    """The marker of ``ctx.patched``: the run took the patch's new path."""


class StepStatus(models.TextChoices):
    """Where a step is in its life."""

    COMPLETED = "completed", "Completed"
    """Done; ``output`` is returned to every replay."""
    FAILED = "failed", "Failed"
    """Failed for good; every replay raises ``StepError`` here."""
    RETRYING = "retrying", "Retrying"
    """A try failed; the next one runs at ``wake_at``."""
    SLEEPING = "sleeping", "Sleeping"
    """A sleep that ends at ``wake_at``."""
    WAITING = "waiting", "Waiting"
    """Waiting for a child run or an event."""


class RunQuerySet(models.QuerySet):
    """Queries over runs."""

    def active(self) -> "RunQuerySet":
        """Runs that are not finished (paused ones included)."""
        return self.filter(status__in=ACTIVE_STATUSES)

    def moving(self) -> "RunQuerySet":
        """Active runs the engine moves forward on its own (all but paused ones)."""
        return self.filter(status__in=MOVING_VALUES)

    def finished(self) -> "RunQuerySet":
        """Runs that completed, failed or were cancelled."""
        return self.filter(status__in=TERMINAL_STATUSES)

    def due(self, now: datetime) -> "RunQuerySet":
        """Moving runs whose bell must ring now (woken, retried, lost or stalled).

        Runs of a paused workflow are left alone: resuming it rings for them.
        """
        return self.filter(not_paused(), status__in=MOVING_VALUES, due_at__lte=now)

    def runnable(self, now: datetime) -> "RunQuerySet":
        """Runs a worker may claim now (see :func:`runnable`)."""
        return self.filter(runnable(now))


class WorkflowRun(models.Model):
    """One execution of a workflow for one trigger event."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Not indexed on its own: the (workspace, created_at) index serves its lookups.
    workspace = models.ForeignKey(
        "eventbus.Workspace", on_delete=models.PROTECT, related_name="runs", db_index=False
    )
    workflow_id = models.CharField(max_length=200)
    version = models.CharField(
        max_length=100,
        blank=True,
        default="",
        help_text="The workflow's version label (@workflow(version=…)) when the run began.",
    )
    event = models.ForeignKey(
        "eventbus.Event",
        on_delete=models.PROTECT,
        related_name="runs",
        help_text="The trigger.",
    )
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    parent = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="children",
    )
    replay_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="replays"
    )
    is_replay = models.BooleanField(
        default=False,
        help_text="Started by a replay (stays true when the replayed run is purged).",
    )
    attempt = models.PositiveIntegerField(default=0, help_text="Retry number of the current step.")
    depth = models.PositiveIntegerField(
        default=0, help_text="How deep in a chain of step.invoke (0: started by an event)."
    )
    lost_executions = models.PositiveIntegerField(
        default=0,
        help_text="Executions lost with their worker since the last step was recorded; "
        "the next step body counts each as one of its tries.",
    )
    wake_at = models.DateTimeField(null=True, blank=True, help_text="Not to start before.")
    due_at = models.DateTimeField(
        null=True, blank=True, help_text="When the dispatcher rings for this run next."
    )
    timeout_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the run is cancelled for taking too long to start or to finish.",
    )
    branch_key = models.CharField(
        max_length=40,
        null=True,
        blank=True,
        help_text="For a branch of step.parallel: the memo key of the parallel step.",
    )
    branch_index = models.PositiveIntegerField(
        null=True, blank=True, help_text="For a branch of step.parallel: its position."
    )
    slot_1 = models.CharField(
        max_length=400,
        blank=True,
        default="",
        help_text="The group of the first concurrency limit the run counts against.",
    )
    slot_2 = models.CharField(
        max_length=400,
        blank=True,
        default="",
        help_text="The group of the second concurrency limit, if there are two.",
    )
    throttle_key = models.CharField(
        max_length=300, blank=True, default="", help_text="The throttle group of the run."
    )
    throttle_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The first start the throttle reserved for the run (it may start then).",
    )
    priority = models.SmallIntegerField(
        default=0, help_text="Seconds the run is moved ahead (+) or back (-) in line."
    )
    order_at = models.DateTimeField(
        default=timezone.now,
        help_text="Its place in line to start: created_at less priority.",
    )
    held_by = models.CharField(
        max_length=400,
        blank=True,
        default="",
        help_text="What held the run back last time it could have started.",
    )
    lease_owner = models.CharField(max_length=64, null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            ("replay_run", "Can replay runs"),
            ("cancel_run", "Can cancel runs"),
            ("resume_run", "Can resume paused runs"),
        ]
        constraints = [
            # One run per subscribed workflow per event, however often it is delivered.
            models.UniqueConstraint(
                fields=["event", "workflow_id"],
                condition=models.Q(is_replay=False, branch_index__isnull=True),
                name="workflows_run_once_per_event",
            )
        ]
        indexes = [
            models.Index(
                fields=["due_at"],
                condition=models.Q(status__in=MOVING_VALUES),
                name="workflows_run_due",
            ),
            models.Index(
                fields=["timeout_at"],
                condition=models.Q(status__in=MOVING_VALUES),
                name="workflows_run_timeout",
            ),
            models.Index(fields=["status", "created_at"], name="workflows_run_status"),
            models.Index(fields=["workflow_id", "created_at"], name="workflows_run_workflow"),
            models.Index(fields=["workspace", "created_at"], name="workflows_run_workspace"),
            models.Index(fields=["created_at"], name="workflows_run_created"),
            # Counting a limit's running runs, and finding the next in line for a slot.
            models.Index(
                fields=["slot_1", "status", "order_at"],
                condition=~models.Q(slot_1=""),
                name="workflows_run_slot_1",
            ),
            models.Index(
                fields=["slot_2", "status", "order_at"],
                condition=~models.Q(slot_2=""),
                name="workflows_run_slot_2",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_id} {self.id} ({self.status})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save; a run with a ``replay_of`` is a replay (``is_replay`` stays true)."""
        if self.replay_of_id is not None:
            self.is_replay = True
        super().save(*args, **kwargs)

    @property
    def is_finished(self) -> bool:
        """Whether the run reached a terminal status."""
        return self.status in TERMINAL_STATUSES

    @property
    def is_branch(self) -> bool:
        """Whether the run executes one branch of a parent's ``step.parallel``."""
        return self.branch_index is not None


class StepResult(models.Model):
    """The memo of one step of a run: what it returned or how it failed."""

    # Not indexed on its own: the unique (run, key) index serves its lookups.
    run = models.ForeignKey(
        WorkflowRun, on_delete=models.CASCADE, related_name="steps", db_index=False
    )
    step_id = models.CharField(max_length=255)
    key = models.CharField(max_length=40, help_text="SHA-1 memo key of the step id and repeat.")
    position = models.PositiveIntegerField(help_text="Order of the step in its run.")
    kind = models.CharField(max_length=16, choices=StepKind.choices)
    status = models.CharField(max_length=16, choices=StepStatus.choices)
    output = models.JSONField(null=True, blank=True)
    output_bytes = models.PositiveBigIntegerField(
        default=0, help_text="Size of the encoded output (0 when not measured)."
    )
    error = models.JSONField(null=True, blank=True)
    attempt = models.PositiveIntegerField(default=0, help_text="Failed tries before this state.")
    wake_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "key"], name="workflows_step_unique_key"),
        ]

    def __str__(self) -> str:
        return f"{self.step_id} [{self.kind}] {self.status}"
