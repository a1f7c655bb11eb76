"""The "Dashboard" page: runs by status per workflow over the last hour and day, the
backlog's age, failure rates, the slowest steps, and runs per hour as an inline SVG
chart. Rendered on the server from :mod:`workflows.metrics` (no script, no CDN)."""

from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from workflows import metrics
from workflows.admin.console import STATUS_COLOURS
from workflows.models import ACTIVE_VALUES, MetricTally, RunStatus

#: The columns of the status tables, in the order a run moves through them.
STATUSES = [*sorted(ACTIVE_VALUES), "completed", "failed", "cancelled"]
_CHART_W, _CHART_H, _HOURS = 720, 140, 24


def _rows(table: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    rows = []
    for workflow_id in sorted(table):
        counts = table[workflow_id]
        ended = sum(counts.get(s, 0) for s in ("completed", "failed", "cancelled"))
        failed = counts.get(RunStatus.FAILED, 0)
        rows.append(
            {
                "workflow_id": workflow_id,
                "counts": [counts.get(status, 0) for status in STATUSES],
                "total": sum(counts.values()),
                "failure_rate": f"{100 * failed / ended:.1f}%" if ended else "–",
            }
        )
    return rows


def chart(hours: dict[datetime, dict[str, int]], now: datetime) -> SafeString:
    """Runs created per hour over the last day, stacked by status, as an SVG."""
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=_HOURS - 1)
    slots = [start + timedelta(hours=i) for i in range(_HOURS)]
    peak = max([sum(hours.get(slot, {}).values()) for slot in slots] + [1])
    width = _CHART_W / _HOURS
    bars = []
    for index, slot in enumerate(slots):
        y = float(_CHART_H)
        for status in STATUSES:
            count = hours.get(slot, {}).get(status, 0)
            if not count:
                continue
            height = (_CHART_H - 4) * count / peak
            y -= height
            bars.append(
                (
                    f"{index * width + 1:.1f}",
                    f"{y:.1f}",
                    f"{width - 2:.1f}",
                    f"{height:.1f}",
                    STATUS_COLOURS.get(status, "#6c757d"),
                    f"{slot:%H}:00 {status}: {count}",
                )
            )
    rects = format_html_join(
        "",
        '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
        bars,
    )
    labels = format_html_join(
        "",
        '<text x="{}" y="{}" font-size="10" fill="#666">{}</text>',
        (
            (f"{i * width + 1:.1f}", _CHART_H + 12, f"{slot:%H}h")
            for i, slot in enumerate(slots)
            if i % 3 == 0
        ),
    )
    return format_html(
        '<svg id="wf-chart" role="img" aria-label="runs per hour, last 24 hours" '
        'viewBox="0 0 {} {}" width="{}" height="{}">{}{}'
        '<text x="{}" y="10" font-size="10" fill="#666" text-anchor="end">{} / h</text></svg>',
        _CHART_W,
        _CHART_H + 16,
        _CHART_W,
        _CHART_H + 16,
        rects,
        labels,
        _CHART_W - 2,
        peak,
    )


@admin.register(MetricTally)
class DashboardAdmin(admin.ModelAdmin):
    """The dashboard, in the place of a list of the counter rows (which nobody edits)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Counters are written by the engine only."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Counters are written by the engine only."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Counters never go down."""
        return False

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        """The dashboard page."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = timezone.now()
        day = now - timedelta(days=1)
        context = {
            **self.admin_site.each_context(request),
            "title": "Dashboard",
            "opts": self.model._meta,
            "statuses": STATUSES,
            "legend": [(status, STATUS_COLOURS.get(status, "#6c757d")) for status in STATUSES],
            "hour_rows": _rows(metrics.runs_by_workflow(now - timedelta(hours=1))),
            "day_rows": _rows(metrics.runs_by_workflow(day)),
            "active": metrics.runs_by_status(),
            "backlog_age": timedelta(seconds=round(metrics.oldest_queued_age(now))),
            "slowest": metrics.slowest_steps(day),
            "chart": chart(metrics.runs_per_hour(day), now),
        }
        return TemplateResponse(request, "admin/workflows/dashboard.html", context)
