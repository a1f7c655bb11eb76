"""The schedule page: each schedule with its next fire time and recent runs.

Read-only, like the rest of the console (schedules are created and changed with
:mod:`workflows.schedules` or ``cron=`` in code). The actions pause, resume and trigger,
each with its own permission (``workflows.pause_schedule``, ``resume_schedule``,
``trigger_schedule``), and call the same functions as the code does.
"""

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from workflows import schedules
from workflows.admin.console import ReadOnlyAdmin, badge, confirm, report_error, run_links
from workflows.exceptions import ConsoleError, UnknownWorkflowError
from workflows.models import Schedule, WorkflowRun

#: Runs listed on a schedule's page.
MAX_RUNS_SHOWN = 20
#: The admin refuses to act on more schedules than this at once.
MAX_BULK_ACTION = 200


@admin.register(Schedule)
class ScheduleAdmin(ReadOnlyAdmin):
    """Schedules: what fires when, what it started, and pausing, resuming, triggering."""

    list_display = (
        "schedule_id",
        "workflow_id",
        "cron_lines",
        "workspace",
        "source",
        "state",
        "next_fire_at",
        "last_fired_at",
    )
    list_filter = ("source", "paused", "workspace")
    search_fields = ("=schedule_id", "=workflow_id")
    ordering = ("next_fire_at", "schedule_id")
    list_select_related = ("workspace",)
    actions = ("pause_schedules", "resume_schedules", "trigger_schedules")
    fields = (
        "schedule_id",
        "workflow_id",
        "cron_lines",
        "data",
        "workspace",
        "source",
        "state",
        "next_fire_at",
        "last_fired_at",
        "recent_runs",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields

    @admin.display(description="cron")
    def cron_lines(self, obj: Schedule) -> SafeString:
        """The entries, one per line."""
        return format_html("<code>{}</code>", "\n".join(obj.entries))

    @admin.display(description="state")
    def state(self, obj: Schedule) -> SafeString:
        """Paused or active."""
        return badge("paused", "paused") if obj.paused else badge("running", "active")

    @admin.display(description="recent runs")
    def recent_runs(self, obj: Schedule) -> SafeString:
        """The latest runs it started (slots and triggers), newest first."""
        runs = (
            WorkflowRun.objects.filter(
                workflow_id=obj.workflow_id,
                event__workspace_id=obj.workspace_id,
                event__idempotency_key__startswith=f"cron:{obj.schedule_id}:",
            )
            .only("pk", "workflow_id", "status")
            .order_by("-created_at")[:MAX_RUNS_SHOWN]
        )
        return run_links(runs)

    # --- permissions -------------------------------------------------------------------
    def has_pause_schedule_permission(self, request: HttpRequest) -> bool:
        """May pause schedules (custom permission ``workflows.pause_schedule``)."""
        return request.user.has_perm("workflows.pause_schedule")

    def has_resume_schedule_permission(self, request: HttpRequest) -> bool:
        """May resume schedules (custom permission ``workflows.resume_schedule``)."""
        return request.user.has_perm("workflows.resume_schedule")

    def has_trigger_schedule_permission(self, request: HttpRequest) -> bool:
        """May trigger schedules (custom permission ``workflows.trigger_schedule``)."""
        return request.user.has_perm("workflows.trigger_schedule")

    # --- actions -----------------------------------------------------------------------
    @admin.action(description="Pause selected schedules", permissions=["pause_schedule"])
    def pause_schedules(self, request: HttpRequest, queryset: Any) -> None:
        """Pause each selected schedule: its slots do not fire until resumed."""
        rows = _bounded(self, request, queryset)
        for row in rows:
            schedules.pause(row.schedule_id)
        self.message_user(request, f"Paused {len(rows)} schedule(s).", messages.SUCCESS)

    @admin.action(description="Resume selected schedules", permissions=["resume_schedule"])
    def resume_schedules(self, request: HttpRequest, queryset: Any) -> None:
        """Resume each selected schedule from its next slot."""
        rows = _bounded(self, request, queryset)
        for row in rows:
            schedules.resume(row.schedule_id)
        self.message_user(request, f"Resumed {len(rows)} schedule(s).", messages.SUCCESS)

    @admin.action(description="Trigger selected schedules now", permissions=["trigger_schedule"])
    def trigger_schedules(self, request: HttpRequest, queryset: Any) -> HttpResponse | None:
        """Start one run of each selected schedule now, after confirmation."""
        rows = _bounded(self, request, queryset)
        if not rows:
            return None
        if request.POST.get("confirmed") != "yes":
            return confirm(
                request,
                self,
                title="Trigger schedules",
                question=f"Start one run now for each of these {len(rows)} schedule(s)? "
                "Their slots are not affected.",
                objects=rows,
                action="trigger_schedules",
                button="Yes, start runs",
            )
        started = 0
        for row in rows:
            try:
                schedules.trigger(row.schedule_id)
                started += 1
            except (ConsoleError, UnknownWorkflowError) as exc:
                report_error(request, exc)
        self.message_user(request, f"Started {started} run(s).", messages.SUCCESS)
        return None


def _bounded(model_admin: ScheduleAdmin, request: HttpRequest, queryset: Any) -> list[Schedule]:
    rows = list(queryset[: MAX_BULK_ACTION + 1])
    if len(rows) > MAX_BULK_ACTION:
        model_admin.message_user(
            request,
            f"Select at most {MAX_BULK_ACTION} schedules at once; nothing was done.",
            messages.WARNING,
        )
        return []
    return rows
