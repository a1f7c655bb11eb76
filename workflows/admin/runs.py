"""The console for runs: read-only pages, and actions that call the services.

Actions (replay, replay from a step, cancel) need the custom permissions
``workflows.replay_run`` and ``workflows.cancel_run``; each asks for confirmation first
and reports what it did. List pages never count a whole table and issue a fixed number
of queries whatever the page size.
"""

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from workflows import services, timeline
from workflows.admin.console import (
    ReadOnlyAdmin,
    WorkflowFilter,
    admin_link,
    badge,
    confirm,
    duration,
    error_html,
    pretty_json,
    report_error,
    run_links,
)
from workflows.exceptions import ConsoleError
from workflows.models import WorkflowRun

#: The admin refuses bulk actions on more runs than this (use ``replay_run --workflow``).
MAX_BULK_ACTION = 1000
#: Steps drawn on a run's timeline; a longer run shows its first ones and says so.
MAX_TIMELINE_STEPS = 2000
#: Related rows (children, replays) listed on a run's page.
MAX_RELATED = 50


@admin.register(WorkflowRun)
class WorkflowRunAdmin(ReadOnlyAdmin):
    """Runs: find them, read them, replay or cancel them."""

    list_display = (
        "short_id",
        "workflow_id",
        "status_badge",
        "workspace",
        "trigger",
        "attempt",
        "created_at",
        "started_at",
        "run_duration",
    )
    list_display_links = ("short_id",)
    list_filter = (
        "status",
        WorkflowFilter,
        "workspace",
        ("created_at", admin.DateFieldListFilter),
    )
    list_select_related = ("workspace", "event")
    # Sorting by an unindexed column would sort the whole table: keep the index order.
    sortable_by = ("created_at",)
    search_fields = ("id",)
    search_help_text = "A run id, a trigger event id, or a workflow id (or its beginning)."
    actions = ("replay_runs", "replay_from_step", "cancel_runs")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "workflow_id",
                    "status_badge",
                    "workspace",
                    "trigger",
                    "attempt",
                    ("created_at", "started_at", "finished_at"),
                    "run_duration",
                )
            },
        ),
        (
            "Relations",
            {
                "fields": (
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
        """From start to finish (to now while active)."""
        return duration(run.started_at, run.finished_at, not run.is_finished)

    @admin.display(description="parent")
    def parent_link(self, run: WorkflowRun) -> SafeString:
        """The run that invoked this one."""
        return admin_link(run.parent)

    @admin.display(description="waits for")
    def waiting_for(self, run: WorkflowRun) -> SafeString:
        """What the run waits for (events, children, branches) and what would cancel it."""
        lines = services.describe_waits(run)
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
        """The run this one replays."""
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
        steps = list(run.steps.order_by("position")[: MAX_TIMELINE_STEPS + 1])
        shown = steps[:MAX_TIMELINE_STEPS]
        context = {
            "run": run,
            "timeline": timeline.build(run, shown),
            "truncated": len(steps) > MAX_TIMELINE_STEPS,
            "limit": MAX_TIMELINE_STEPS,
            "marks": timeline.KIND_MARKS.items(),
        }
        return render_to_string("admin/workflows/workflowrun/timeline.html", context)

    # --- permissions -------------------------------------------------------------------
    def has_replay_run_permission(self, request: HttpRequest) -> bool:
        """May replay runs (custom permission ``workflows.replay_run``)."""
        return request.user.has_perm("workflows.replay_run")

    def has_cancel_run_permission(self, request: HttpRequest) -> bool:
        """May cancel runs (custom permission ``workflows.cancel_run``)."""
        return request.user.has_perm("workflows.cancel_run")

    # --- actions on selected runs ------------------------------------------------------
    @admin.action(description="Replay selected runs", permissions=["replay_run"])
    def replay_runs(self, request: HttpRequest, queryset: Any) -> HttpResponse | None:
        """Start a new run for each selected run, after confirmation."""
        runs = _bounded(request, queryset)
        if runs is None:
            return None
        if request.POST.get("confirmed") != "yes":
            return confirm(
                request,
                self,
                title="Replay runs",
                question=f"Start a new run of the same workflow and trigger event for "
                f"each of these {len(runs)} run(s)? The originals are not changed.",
                objects=runs,
                action="replay_runs",
                button="Yes, replay",
            )
        done = 0
        for run in runs:
            try:
                services.replay_run(run.pk)
                done += 1
            except ConsoleError as exc:
                report_error(request, exc)
        self.message_user(request, f"Replayed {done} run(s) as new runs.", messages.SUCCESS)
        return None

    @admin.action(description="Replay from a step…", permissions=["replay_run"])
    def replay_from_step(self, request: HttpRequest, queryset: Any) -> HttpResponse | None:
        """Go to the step chooser of the one selected run."""
        pks = list(queryset.values_list("pk", flat=True)[:2])
        if len(pks) != 1:
            self.message_user(
                request, "Select exactly one run to replay from a step.", messages.WARNING
            )
            return None
        return HttpResponseRedirect(reverse("admin:workflows_workflowrun_replay", args=[pks[0]]))

    @admin.action(description="Cancel selected runs", permissions=["cancel_run"])
    def cancel_runs(self, request: HttpRequest, queryset: Any) -> HttpResponse | None:
        """Cancel each selected active run, after confirmation."""
        runs = _bounded(request, queryset)
        if runs is None:
            return None
        if request.POST.get("confirmed") != "yes":
            return confirm(
                request,
                self,
                title="Cancel runs",
                question=f"Cancel these {len(runs)} run(s)? Finished runs are left as they are.",
                objects=runs,
                action="cancel_runs",
                button="Yes, cancel",
            )
        cancelled = sum(services.cancel_run(run.pk) for run in runs)
        self.message_user(
            request,
            f"Cancelled {cancelled} run(s); {len(runs) - cancelled} had already finished.",
            messages.SUCCESS,
        )
        return None

    # --- actions on one run (buttons of its page) --------------------------------------
    def get_urls(self) -> list[Any]:
        """The run page's own action pages: replay (from a step) and cancel."""
        wrap = self.admin_site.admin_view
        return [
            path(
                "<uuid:object_id>/replay/",
                wrap(self.replay_view),
                name="workflows_workflowrun_replay",
            ),
            path(
                "<uuid:object_id>/cancel/",
                wrap(self.cancel_view),
                name="workflows_workflowrun_cancel",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        """The run page, with buttons for the actions the user may take."""
        extra = {
            "can_replay": self.has_replay_run_permission(request),
            "can_cancel": self.has_cancel_run_permission(request),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, extra)

    def replay_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Replay one run, from the start or from a chosen step, after confirmation."""
        if not self.has_replay_run_permission(request):
            raise PermissionDenied
        run = self.get_object(request, str(object_id))
        if run is None:
            return self._not_found(request, object_id)
        if request.method == "POST" and request.POST.get("confirmed") == "yes":
            step = request.POST.get("from_step") or None
            try:
                replay = services.replay_run(run.pk, from_step=step)
            except ConsoleError as exc:
                report_error(request, exc)
                return HttpResponseRedirect(request.path)
            kept = replay.steps.count()
            where = f"from step {step!r}, keeping {kept} step(s)" if step else "from the start"
            self.message_user(
                request,
                format_html(
                    "Replayed run {} {} as {}.",
                    str(run.pk)[:8],
                    where,
                    admin_link(replay, replay.pk),
                ),
                messages.SUCCESS,
            )
            return HttpResponseRedirect(
                reverse("admin:workflows_workflowrun_change", args=[replay.pk])
            )
        steps = list(run.steps.order_by("position")[:MAX_TIMELINE_STEPS])
        return confirm(
            request,
            self,
            title=f"Replay run {str(run.pk)[:8]}",
            question="Start a new run of the same workflow and trigger event. Choose where "
            "it starts: the completed steps before that point are copied, the rest re-run. "
            "This run is not changed.",
            objects=[run],
            button="Replay",
            step_rows=steps,
        )

    def cancel_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Cancel one run after confirmation."""
        if not self.has_cancel_run_permission(request):
            raise PermissionDenied
        run = self.get_object(request, str(object_id))
        if run is None:
            return self._not_found(request, object_id)
        if request.method == "POST" and request.POST.get("confirmed") == "yes":
            if services.cancel_run(run.pk):
                self.message_user(request, f"Cancelled run {run.pk}.", messages.SUCCESS)
            else:
                self.message_user(
                    request, f"Run {run.pk} had already finished ({run.status}).", messages.WARNING
                )
            return HttpResponseRedirect(
                reverse("admin:workflows_workflowrun_change", args=[run.pk])
            )
        return confirm(
            request,
            self,
            title=f"Cancel run {str(run.pk)[:8]}",
            question="Cancel this run? It runs no further step; a step in progress "
            "still records its outcome.",
            objects=[run],
            button="Yes, cancel",
        )

    def _not_found(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        return self._get_obj_does_not_exist_redirect(request, self.opts, str(object_id))


def _bounded(request: HttpRequest, queryset: Any) -> list[WorkflowRun] | None:
    runs = list(queryset[: MAX_BULK_ACTION + 1])
    if len(runs) > MAX_BULK_ACTION:
        messages.warning(
            request,
            f"More than {MAX_BULK_ACTION} runs selected: narrow the selection, or use the "
            "management command (replay_run --workflow … --status …).",
        )
        return None
    return runs
