"""The event page as the workflows see it: what an event triggered, what emitted it, replay.

It replaces the event bus's plain page (:class:`eventbus.admin.EventAdmin`, which knows
nothing of runs) by a subclass. Replaying needs the custom permission
``eventbus.replay_event``; it calls :func:`workflows.services.replay_event`, as the
``replay_event`` command does.
"""

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from eventbus.admin import EventAdmin as PlainEventAdmin
from eventbus.models import Event
from workflows import outcomes, registry, services
from workflows.admin.console import admin_link, badge, confirm, report_error
from workflows.exceptions import ConsoleError
from workflows.models import StepResult, WorkflowRun

#: Triggered runs listed on an event's page.
MAX_RUNS_SHOWN = 100
#: The admin refuses to replay more events than this at once.
MAX_BULK_ACTION = 200
#: The names of the engine's own events (``workflows/run.finished``, …) start with this.
ENGINE_PREFIX = "workflows/"


class NameFilter(admin.SimpleListFilter):
    """Filter by event name, offering the names workflows subscribe to (no query)."""

    title = "name"
    parameter_name = "name"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        """Every trigger of a registered workflow; ``prefix/*`` matches a whole family."""
        names = sorted({t for wf in registry.all_workflows() for t in wf.triggers})
        return [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        """Events with that name (index ``eventbus_event_name``)."""
        value = self.value()
        if not value:
            return queryset
        if value.endswith("/*"):
            return queryset.filter(name__startswith=value[:-1])
        return queryset.filter(name=value)


class OriginFilter(admin.SimpleListFilter):
    """Application events by default; the engine's own ``workflows/…`` events on request.

    The engine emits a ``workflows/run.finished`` (or ``.failed``, ``.cancelled``) event
    per run: left in, they would fill the list. A search, or a name filter asking for an
    engine event, shows them whatever this filter says.
    """

    title = "origin"
    parameter_name = "origin"
    APPLICATION, ENGINE, ALL = "application", "engine", "all"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        """Application (the default), engine, or all events."""
        return [
            (self.APPLICATION, "application events"),
            (self.ENGINE, f"engine events ({ENGINE_PREFIX}…)"),
            (self.ALL, "all events"),
        ]

    def choices(self, changelist: Any) -> Any:
        """The lookups, with "application events" as the default (no "All" of its own)."""
        current = self.value() or self.APPLICATION
        for value, label in self.lookup_choices:
            yield {
                "selected": current == value,
                "query_string": changelist.get_query_string({self.parameter_name: value}),
                "display": label,
            }

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        """Events of the chosen origin."""
        value = self.value() or self.APPLICATION
        if value == self.ENGINE:
            return queryset.filter(name__startswith=ENGINE_PREFIX)
        asked_for = request.GET.get(NameFilter.parameter_name, "").startswith(ENGINE_PREFIX)
        if value == self.ALL or asked_for or request.GET.get("q"):
            return queryset
        return queryset.exclude(name__startswith=ENGINE_PREFIX)


class EventAdmin(PlainEventAdmin):
    """Events: what arrived, what it triggered, what emitted it, and replaying it."""

    list_display = (
        "name",
        "workspace",
        "status_badge",
        "ts_shown",
        "created_at",
        "emitted_at",
        "runs_triggered",
    )
    list_filter = (
        OriginFilter,
        "workspace",
        NameFilter,
        "status",
        ("created_at", admin.DateFieldListFilter),
    )
    actions = ("replay_events",)
    fields = (
        "id",
        "name",
        "workspace",
        "status_badge",
        ("ts_shown", "created_at", "emitted_at"),
        "idempotency_key",
        "payload",
        "emitted_by",
        "triggered_runs",
        "not_started",
    )

    def get_queryset(self, request: HttpRequest) -> Any:
        """Events with their run count: a correlated subquery, evaluated for shown rows only.

        A ``COUNT`` with ``GROUP BY`` over the join would aggregate the whole table
        before the page is cut; the subquery uses the index on ``workflowrun.event``.
        """
        runs = (
            WorkflowRun.objects.filter(event=OuterRef("pk"))
            .order_by()
            .values("event")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(run_count=Coalesce(Subquery(runs, output_field=IntegerField()), 0))
        )

    @admin.display(description="status")
    def status_badge(self, event: Event) -> SafeString:
        """Scheduled, emitted or cancelled, colour-coded."""
        return badge(event.status)

    @admin.display(description="runs")
    def runs_triggered(self, event: Event) -> int:
        """How many runs the event triggered (replays included)."""
        return event.run_count

    @admin.display(description="emitted by")
    def emitted_by(self, event: Event) -> SafeString:
        """The run and step whose ``send_event`` emitted this event, if any.

        The event keeps their ids only (no foreign key): a run or step whose row is gone
        (purged) is shown by its id.
        """
        if event.source_run_id is None:
            return format_html("{}", "application code (not a workflow step)")
        run = WorkflowRun.objects.filter(pk=event.source_run_id).only("workflow_id").first()
        if run is None:
            shown = format_html("run {} (purged)", event.source_run_id)
            if event.source_step_id is None:
                return shown
            return format_html("{}, step {} (purged)", shown, event.source_step_id)
        shown = format_html("run {}", admin_link(run, f"{run.workflow_id} {run.pk}"))
        if event.source_step_id is None:
            return shown
        step = (
            StepResult.objects.filter(pk=event.source_step_id).only("step_id", "position").first()
        )
        if step is None:
            return format_html("{}, step {} (purged)", shown, event.source_step_id)
        url = reverse("admin:workflows_workflowrun_change", args=[run.pk])
        return format_html(
            '{}, step <a href="{}#step-{}">{}</a>', shown, url, step.position, step.step_id
        )

    @admin.display(description="triggered runs")
    def triggered_runs(self, event: Event) -> SafeString:
        """The runs this event triggered, replays included."""
        runs = event.runs.order_by("created_at")[:MAX_RUNS_SHOWN]
        rows = [
            (
                admin_link(run, f"{run.workflow_id} {run.pk}"),
                badge(run.status),
                " (replay)" if run.is_replay else "",
            )
            for run in runs
        ]
        if not rows:
            return format_html("{}", "none")
        return format_html_join(mark_safe("<br>"), "{} {}{}", rows)

    @admin.display(description="started no run of")
    def not_started(self, event: Event) -> SafeString:
        """Workflows subscribed to the event that it started no run of, and why (or the
        batch it joined): as ``show_event`` prints them."""
        lines = [line for line in outcomes.of_event(event) if line.run is None or line.reason]
        rows = [(line.workflow_id, line.text) for line in lines[:MAX_RUNS_SHOWN]]
        if not rows:
            return format_html("{}", "—")
        return format_html_join(mark_safe("<br>"), "{} ({})", rows)

    def has_replay_event_permission(self, request: HttpRequest) -> bool:
        """May replay events (custom permission ``eventbus.replay_event``)."""
        return request.user.has_perm("eventbus.replay_event")

    @admin.action(description="Replay selected events", permissions=["replay_event"])
    def replay_events(self, request: HttpRequest, queryset: Any) -> HttpResponse | None:
        """Start new runs for each selected event, after confirmation."""
        events = list(queryset[: MAX_BULK_ACTION + 1])
        if len(events) > MAX_BULK_ACTION:
            self.message_user(
                request,
                f"More than {MAX_BULK_ACTION} events selected: narrow the selection.",
                messages.WARNING,
            )
            return None
        if request.POST.get("confirmed") != "yes":
            return confirm(
                request,
                self,
                title="Replay events",
                question="Start a new run of every workflow subscribed now, for each of "
                f"these {len(events)} event(s)?",
                objects=events,
                action="replay_events",
                button="Yes, replay",
            )
        started = 0
        for event in events:
            try:
                started += len(services.replay_event(event.pk))
            except ConsoleError as exc:
                report_error(request, exc)
        self.message_user(request, f"Started {started} run(s).", messages.SUCCESS)
        return None

    def get_urls(self) -> list[Any]:
        """The event page's own replay page."""
        view = self.admin_site.admin_view(self.replay_view)
        return [
            path("<uuid:object_id>/replay/", view, name="eventbus_event_replay"),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        """The event page, with a replay button for users who may replay."""
        extra = {"can_replay_event": self.has_replay_event_permission(request)}
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    def replay_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Replay one event after confirmation (seeing events is needed too)."""
        if not (self.has_view_permission(request) and self.has_replay_event_permission(request)):
            raise PermissionDenied
        event = self.get_object(request, str(object_id))
        if event is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, str(object_id))
        back = HttpResponseRedirect(reverse("admin:eventbus_event_change", args=[event.pk]))
        if request.method == "POST" and request.POST.get("confirmed") == "yes":
            try:
                runs = services.replay_event(event.pk)
            except ConsoleError as exc:
                report_error(request, exc)
                return back
            links = format_html_join(", ", "{}", ((admin_link(r, r.workflow_id),) for r in runs))
            self.message_user(
                request,
                format_html(
                    "Replayed event {}: started {} run(s): {}.", event.name, len(runs), links
                ),
                messages.SUCCESS,
            )
            return back
        return confirm(
            request,
            self,
            title=f"Replay event {event.name}",
            question="Start a new run of every workflow subscribed to this event now? "
            "Earlier runs are not changed.",
            objects=[event],
            button="Yes, replay",
        )


# The event bus registered its plain page first (it comes first in INSTALLED_APPS, and
# importing eventbus.admin above registers it in any case): take its place.
if admin.site.is_registered(Event):
    admin.site.unregister(Event)
admin.site.register(Event, EventAdmin)
