"""The console for runs: read-only pages, and actions that call the services.

Actions (replay, replay from a step, cancel, resume) need the custom permissions
``workflows.replay_run``, ``workflows.cancel_run`` and ``workflows.resume_run``; each
asks for confirmation first and reports what it did. List pages never count a whole
table and issue a fixed number of queries whatever the page size.
"""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from workflows import services, timeline
from workflows.admin.console import (
    ReadOnlyAdmin,
    VersionFilter,
    WorkflowFilter,
    admin_link,
    badge,
    duration,
    error_html,
    moment,
    pretty_json,
    run_links,
)
from workflows.admin.run_actions import RunActions
from workflows.exceptions import ConsoleError
from workflows.models import RunStatus, WorkflowRun

#: Steps drawn on a run's timeline; a longer run shows its first ones and says so.
MAX_TIMELINE_STEPS = 2000
#: Related rows (children, replays) listed on a run's page.
MAX_RELATED = 50


@admin.register(WorkflowRun)
class WorkflowRunAdmin(RunActions, ReadOnlyAdmin):
    """Runs: find them, read them, replay or cancel them."""

    list_display = (
        "short_id",
        "workflow_id",
        "version",
        "status_badge",
        "workspace",
        "trigger",
        "attempt",
        "created",
        "started",
        "run_duration",
    )
    list_display_links = ("short_id",)
    list_filter = (
        "status",
        WorkflowFilter,
        VersionFilter,
        "workspace",
        ("created_at", admin.DateFieldListFilter),
    )
    list_select_related = ("workspace", "event")
    # Sorting by an unindexed column would sort the whole table: keep the index order.
    sortable_by = ("created",)
    search_fields = ("id",)
    search_help_text = "A run id, a trigger event id, or a workflow id (or its beginning)."
    actions = ("replay_runs", "replay_from_step", "cancel_runs", "resume_runs")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "workflow_id",
                    "version",
                    "status_badge",
                    "mismatch",
                    "workspace",
                    "trigger",
                    "attempt",
                    ("created", "started", "finished"),
                    "run_duration",
                )
            },
        ),
        (
            "Relations",
            {
                "fields": (
                    "flow_control",
                    "waiting_for",
                    "parent_link",
                    "children_links",
                    "replay_of_link",
                    "replays",
                )
            },
        ),
        ("Data", {"fields": ("input", "output_json", "error_details")}),
        ("Timeline", {"fields": ("timeline",)}),
    )

    def get_queryset(self, request: HttpRequest) -> Any:
        """Runs with their workspace and trigger, without the trigger's payload."""
        return super().get_queryset(request).defer("event__data")

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> Any:
        """Exact, index-backed lookups only: a ``LIKE '%…%'`` would scan the table."""
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            pk = services.parse_id(term)
        except ConsoleError:
            return queryset.filter(workflow_id__startswith=term), False
        return queryset.filter(pk=pk) | queryset.filter(event_id=pk), False

    # --- columns and fields ------------------------------------------------------------
    @admin.display(description="run", ordering="created_at")
    def short_id(self, run: WorkflowRun) -> str:
        """The first characters of the id, enough to tell runs apart."""
        return str(run.pk)[:8]

    @admin.display(description="status")
    def status_badge(self, run: WorkflowRun) -> SafeString:
        """The status, colour-coded."""
        return badge(run.status)

    @admin.display(description="trigger event")
    def trigger(self, run: WorkflowRun) -> SafeString:
        """The trigger event's name, linking to it."""
        return admin_link(run.event, run.event.name)

    @admin.display(description="duration")
    def run_duration(self, run: WorkflowRun) -> str:
        """From start to finish (to now while active), to the millisecond."""
        return duration(run.started_at, run.finished_at, not run.is_finished)

    # A run lasts seconds: its times are shown to the millisecond (Django's format
    # stops at minutes), on one line.
    @admin.display(description="created at", ordering="created_at")
    def created(self, run: WorkflowRun) -> SafeString:
        """When the run was created."""
        return moment(run.created_at)

    @admin.display(description="started at")
    def started(self, run: WorkflowRun) -> SafeString:
        """When a worker first executed it."""
        return moment(run.started_at)

    @admin.display(description="finished at")
    def finished(self, run: WorkflowRun) -> SafeString:
        """When it reached its final status."""
        return moment(run.finished_at)

    @admin.display(description="paused at")
    def mismatch(self, run: WorkflowRun) -> SafeString:
        """For a paused run: the step where the code and the record part, and how."""
        error = run.error or {}
        if run.status != RunStatus.PAUSED:
            return format_html("{}", "—")
        return format_html(
            '<dl class="wf-mismatch"><dt>step</dt><dd>{}</dd><dt>recorded</dt><dd>{}</dd>'
            "<dt>the code asked for</dt><dd>{}</dd></dl>",
            error.get("step_id") or "?",
            error.get("recorded") or "?",
            error.get("called") or "?",
        )

    @admin.display(description="parent")
    def parent_link(self, run: WorkflowRun) -> SafeString:
        """The run that invoked this one."""
        return admin_link(run.parent)

    @admin.display(description="flow control")
    def flow_control(self, run: WorkflowRun) -> SafeString:
        """The run's concurrency groups, throttle key and priority, and what holds it."""
        lines = timeline.describe_flow(run)
        if not lines:
            return format_html("{}", "none")
        return format_html(
            '<ul class="wf-flow">{}</ul>',
            format_html_join("", "<li>{}</li>", ((line,) for line in lines)),
        )

    @admin.display(description="waits for")
    def waiting_for(self, run: WorkflowRun) -> SafeString:
        """What the run waits for (events, children, branches) and what would cancel it."""
        lines = timeline.describe_waits(run)
        if not lines:
            return format_html("{}", "nothing")
        return format_html(
            '<ul class="wf-waits">{}</ul>',
            format_html_join("", "<li>{}</li>", ((line,) for line in lines)),
        )

    @admin.display(description="children")
    def children_links(self, run: WorkflowRun) -> SafeString:
        """Runs this one invoked, and the branch runs of its parallel steps."""
        return run_links(run.children.order_by("created_at")[:MAX_RELATED])

    @admin.display(description="replay of")
    def replay_of_link(self, run: WorkflowRun) -> SafeString:
        """The run this one replays ("a purged run" once that one was purged)."""
        if run.is_replay and run.replay_of_id is None:
            return format_html("{}", "a purged run")
        return admin_link(run.replay_of)

    @admin.display(description="replays")
    def replays(self, run: WorkflowRun) -> SafeString:
        """Runs that replay this one."""
        return run_links(run.replays.order_by("created_at")[:MAX_RELATED])

    @admin.display(description="input (trigger payload)")
    def input(self, run: WorkflowRun) -> SafeString:
        """The trigger event's data, as the workflow saw it in ``ctx.event.data``."""
        return pretty_json(run.event.data)

    @admin.display(description="output")
    def output_json(self, run: WorkflowRun) -> SafeString:
        """What the workflow returned."""
        return pretty_json(run.output) if run.is_finished else format_html("{}", "—")

    @admin.display(description="error")
    def error_details(self, run: WorkflowRun) -> SafeString:
        """The error and its traceback."""
        return error_html(run.error)

    @admin.display(description="steps")
    def timeline(self, run: WorkflowRun) -> SafeString:
        """One bar per step on a shared time axis."""
        # The timeline shows no output or error: leave them in the database (a run's
        # outputs can be tens of megabytes).
        steps = list(
            run.steps.defer("output", "error").order_by("position")[: MAX_TIMELINE_STEPS + 1]
        )
        shown = steps[:MAX_TIMELINE_STEPS]
        context = {
            "run": run,
            "timeline": timeline.build(run, shown),
            "truncated": len(steps) > MAX_TIMELINE_STEPS,
            "limit": MAX_TIMELINE_STEPS,
            "marks": timeline.KIND_MARKS.items(),
        }
        return render_to_string("admin/workflows/workflowrun/timeline.html", context)
