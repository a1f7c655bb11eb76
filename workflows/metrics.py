"""``GET /metrics``: the engine's counters and gauges in Prometheus' text format.

Counters are the totals every process added to the database (:mod:`workflows.tally`):
one scrape of any web process covers all workers on all hosts, survives restarts, and
never goes down (``purge_runs`` does not touch them). Gauges are read when scraped,
each one indexed query whose cost follows the number of active runs (or deferred
events), not of the finished ones. The admin dashboard's figures are read here too.
"""

import json
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Max, Q
from django.db.models.functions import TruncHour
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from eventbus import bus
from eventbus.models import Event, EventStatus
from workflows import tally, telemetry
from workflows.models import (
    ACTIVE_VALUES,
    MetricTally,
    RunStatus,
    StepKind,
    StepResult,
    WorkflowRun,
)

_DOCS = {
    telemetry.RUNS_FINISHED: "Runs that completed, failed or were cancelled.",
    telemetry.STEPS: "Step executions by kind and by the status they ended in.",
    telemetry.STEP_DURATION: "How long step executions took (step.run: one try).",
}


def _tallies() -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, labels, value in MetricTally.objects.values_list("name", "labels", "value"):
        found.setdefault(name, []).append((json.loads(labels or "{}"), value))
    return found


def _counter(name: str, labels: list[str], series: list[tuple[dict[str, str], float]]) -> Metric:
    family = CounterMetricFamily(name.removesuffix("_total"), _DOCS[name], labels=labels)
    for values, total in sorted(series, key=lambda item: sorted(item[0].items())):
        family.add_metric([values.get(label, "") for label in labels], total)
    return family


def _histogram(found: dict[str, list[tuple[dict[str, str], float]]]) -> Metric:
    name = telemetry.STEP_DURATION
    family = HistogramMetricFamily(name, _DOCS[name], labels=["kind"])
    buckets: dict[str, dict[str, float]] = {}
    for labels, count in found.get(f"{name}_bucket", []):
        buckets.setdefault(labels.get("kind", ""), {})[labels.get("le", "+Inf")] = count
    sums = {labels.get("kind", ""): value for labels, value in found.get(f"{name}_sum", [])}
    for kind in sorted(buckets):
        cumulative, rows = 0.0, []
        for bound in [*(repr(b) for b in tally.DURATION_BUCKETS), "+Inf"]:
            cumulative += buckets[kind].get(bound, 0.0)
            rows.append((bound, cumulative))
        family.add_metric([kind], rows, sum_value=sums.get(kind, 0.0))
    return family


def oldest_queued_age(now: datetime) -> float:
    """Seconds since the oldest queued run that may start now was created (0 if none).

    The ``(status, created_at)`` index serves it: the first entry under ``queued``
    that is due.
    """
    oldest = (
        WorkflowRun.objects.filter(status=RunStatus.QUEUED)
        .filter(Q(wake_at__isnull=True) | Q(wake_at__lte=now))
        .order_by("created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    return max((now - oldest).total_seconds(), 0.0) if oldest else 0.0


def runs_by_status() -> dict[str, int]:
    """How many runs are in each active status now (paused included), zeros too."""
    counts = dict.fromkeys(ACTIVE_VALUES, 0)
    rows = (
        WorkflowRun.objects.filter(status__in=ACTIVE_VALUES)
        .values_list("status")
        .annotate(n=Count("*"))
        .order_by()
    )
    counts.update(dict(rows))
    return counts


class EngineCollector:
    """A ``prometheus_client`` collector that reads the engine's figures when scraped."""

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family of the engine."""
        tally.flush()  # this process's own recent counts, too
        found = _tallies()
        yield _counter(
            telemetry.RUNS_FINISHED,
            ["workflow_id", "status"],
            found.get(telemetry.RUNS_FINISHED, []),
        )
        yield _counter(telemetry.STEPS, ["kind", "status"], found.get(telemetry.STEPS, []))
        yield _histogram(found)
        runs = GaugeMetricFamily(
            "workflows_runs", "Runs in each active status now.", labels=["status"]
        )
        for status, count in sorted(runs_by_status().items()):
            runs.add_metric([status], count)
        yield runs
        now = timezone.now()
        yield GaugeMetricFamily(
            "workflows_oldest_queued_run_age_seconds",
            "Age of the oldest queued run that may start now (0 when none).",
            value=oldest_queued_age(now),
        )
        scheduled = Event.objects.filter(status=EventStatus.SCHEDULED, ts__gt=bus.now_ms()).count()
        yield GaugeMetricFamily(
            "workflows_events_scheduled", "Deferred events not yet due.", value=scheduled
        )


def render() -> bytes:
    """The engine's metrics in Prometheus' text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector())
    return generate_latest(registry)


# --- the admin dashboard ------------------------------------------------------------------
def runs_by_workflow(since: datetime) -> dict[str, dict[str, int]]:
    """Runs created since ``since``, by workflow and status (the ``created_at`` index)."""
    table: dict[str, dict[str, int]] = {}
    rows = (
        WorkflowRun.objects.filter(created_at__gte=since)
        .values_list("workflow_id", "status")
        .annotate(n=Count("*"))
        .order_by()
    )
    for workflow_id, status, count in rows:
        table.setdefault(workflow_id, {})[status] = count
    return table


def runs_per_hour(since: datetime) -> dict[datetime, dict[str, int]]:
    """Runs created since ``since``, by hour of creation and status."""
    hours: dict[datetime, dict[str, int]] = {}
    rows = (
        WorkflowRun.objects.filter(created_at__gte=since)
        .annotate(hour=TruncHour("created_at"))
        .values_list("hour", "status")
        .annotate(n=Count("*"))
        .order_by()
    )
    for hour, status, count in rows:
        hours.setdefault(hour, {})[status] = count
    return hours


def slowest_steps(since: datetime, limit: int = 10) -> list[dict[str, object]]:
    """The ``step.run`` steps of runs created since ``since`` that took longest, from
    their first try to their outcome (backoffs included): workflow, step id, how many,
    longest and mean duration in seconds."""
    took = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    rows = (
        StepResult.objects.filter(
            run__created_at__gte=since, kind=StepKind.RUN, finished_at__isnull=False
        )
        .annotate(took=took)
        .values("run__workflow_id", "step_id")
        .annotate(longest=Max("took"), mean=Avg("took"), count=Count("*"))
        .order_by("-longest")[:limit]
    )
    return [
        {
            "workflow_id": row["run__workflow_id"],
            "step_id": row["step_id"],
            "count": row["count"],
            "longest": _seconds(row["longest"]),
            "mean": _seconds(row["mean"]),
        }
        for row in rows
    ]


def _seconds(value: object) -> float:
    """A duration as the databases return it (a ``timedelta``, or microseconds)."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value or 0) / 1_000_000
