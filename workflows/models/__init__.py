"""The models of the workflow engine (read-only for users), one module per concern.

:mod:`.runs` (runs, step memos and the status vocabulary), :mod:`.waits` (what runs
wait for), :mod:`.schedules`, :mod:`.pauses` (paused workflows, skipped events), :mod:`.flow`
(flow control's throttles), :mod:`.admission` (rate limits, singletons, debounces,
batches, idempotency values), :mod:`.observability` (the counters of ``GET /metrics``).
"""

from workflows.models.admission import BatchEvent, GateKind, GateState, IdempotencyRecord
from workflows.models.flow import ThrottleState
from workflows.models.observability import MetricTally
from workflows.models.pauses import EventSkip, PausedQuerySet, PausedWorkflow, SkipReason
from workflows.models.runs import (
    ACTIVE_STATUSES,
    ACTIVE_VALUES,
    MOVING_STATUSES,
    MOVING_VALUES,
    SHAPING_FIELDS,
    TERMINAL_STATUSES,
    RunQuerySet,
    RunStatus,
    StepKind,
    StepResult,
    StepStatus,
    WorkflowRun,
    not_paused,
    runnable,
    unshaped,
)
from workflows.models.schedules import Schedule, ScheduleQuerySet, ScheduleSource
from workflows.models.waits import Wait, WaitKind, WaitPath

__all__ = [
    "ACTIVE_STATUSES",
    "ACTIVE_VALUES",
    "MOVING_STATUSES",
    "MOVING_VALUES",
    "TERMINAL_STATUSES",
    "BatchEvent",
    "EventSkip",
    "MetricTally",
    "GateKind",
    "GateState",
    "IdempotencyRecord",
    "PausedQuerySet",
    "PausedWorkflow",
    "RunQuerySet",
    "RunStatus",
    "Schedule",
    "ScheduleQuerySet",
    "ScheduleSource",
    "SkipReason",
    "StepKind",
    "StepResult",
    "StepStatus",
    "ThrottleState",
    "Wait",
    "WaitKind",
    "WaitPath",
    "WorkflowRun",
    "not_paused",
    "runnable",
    "SHAPING_FIELDS",
    "unshaped",
]
