"""The console for step memos: read-only pages, usually reached from their run's page."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.safestring import SafeString

from workflows import services, timeline
from workflows.admin.console import (
    ReadOnlyAdmin,
    admin_link,
    badge,
    duration,
    error_html,
    pretty_json,
)
from workflows.exceptions import ConsoleError
from workflows.models import StepResult


@admin.register(StepResult)
class StepResultAdmin(ReadOnlyAdmin):
    """Step memos; usually read on their run's page."""

    list_display = ("step_id", "run_link", "kind", "status_badge", "attempt", "started_at", "took")
    list_filter = ("kind", "status")
    list_select_related = ("run",)
    sortable_by = ()
    ordering = ("-pk",)
    search_fields = ("run__id",)
    search_help_text = "A run id: its steps."
    fields = (
        "run_link",
        "step_id",
        "key",
        "position",
        "kind",
        "status_badge",
        "attempt",
        ("started_at", "finished_at", "wake_at"),
        "output_json",
        "error_details",
    )

    def get_queryset(self, request: HttpRequest) -> Any:
        """Steps with their run, without the large fields a page does not show.

        The list shows no output or error; a step's page reads its own when shown.
        """
        return super().get_queryset(request).defer("output", "error", "run__output", "run__error")

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> Any:
        """A run id lists that run's steps (index on ``run``); anything else, nothing."""
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(run_id=services.parse_id(term)), False
        except ConsoleError:
            return queryset.none(), False

    @admin.display(description="run")
    def run_link(self, step: StepResult) -> SafeString:
        """The run of this step."""
        return admin_link(step.run, f"{step.run.workflow_id} {str(step.run_id)[:8]}")

    @admin.display(description="status")
    def status_badge(self, step: StepResult) -> SafeString:
        """The status, colour-coded (``cancelled`` if its run ended while it slept or waited)."""
        return badge(timeline.status(step, step.run))

    @admin.display(description="duration")
    def took(self, step: StepResult) -> str:
        """From start to finish."""
        return duration(step.started_at, step.finished_at, False)

    @admin.display(description="output")
    def output_json(self, step: StepResult) -> SafeString:
        """What the step returned."""
        return pretty_json(step.output)

    @admin.display(description="error")
    def error_details(self, step: StepResult) -> SafeString:
        """The error and its traceback."""
        return error_html(step.error)
