"""Building blocks of the workflows console, shared by the modules of this package.

No operation lives here: actions call :mod:`workflows.services`. What keeps the pages
fast on large tables (:class:`ReadOnlyAdmin` and its capped paginator) and
:func:`pretty_json` come from :mod:`eventbus.admin`, which needs them itself, and are
re-exported; the rest makes the pages readable (status badges, links, durations,
errors) and the actions safe (the confirmation page).
"""

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from eventbus.admin import CappedPaginator, ReadOnlyAdmin, pretty_json
from workflows import registry, timeline
from workflows.models import ACTIVE_VALUES, WorkflowRun

__all__ = [
    "STATUS_COLOURS",
    "CappedPaginator",
    "ReadOnlyAdmin",
    "VersionFilter",
    "WorkflowFilter",
    "admin_link",
    "badge",
    "confirm",
    "duration",
    "error_html",
    "moment",
    "pretty_json",
    "report_error",
    "run_links",
]

#: Colour of each run, step and event status (text is always shown too: colour-blind
#: readers and screenshots in black and white still get the status).
STATUS_COLOURS = {
    "queued": "#6c757d",
    "running": "#0d6efd",
    "sleeping": "#6f42c1",
    "waiting": "#b8860b",
    "completed": "#198754",
    "failed": "#dc3545",
    "cancelled": "#495057",
    "paused": "#d63384",
    "retrying": "#fd7e14",
    "scheduled": "#6f42c1",
    "emitted": "#198754",
}


def badge(status: str, label: str | None = None) -> SafeString:
    """A coloured pill showing ``status``."""
    colour = STATUS_COLOURS.get(status, "#6c757d")
    return format_html(
        '<span class="wf-status wf-status-{}" style="background:{};color:#fff;'
        'padding:1px 7px;border-radius:9px;font-size:11px;white-space:nowrap">{}</span>',
        status,
        colour,
        label or status,
    )


def admin_link(obj: Any, label: Any = None) -> SafeString:
    """A link to ``obj``'s admin page."""
    if obj is None:
        return format_html("{}", "—")
    opts = obj._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, label if label is not None else obj)


def confirm(
    request: HttpRequest,
    model_admin: admin.ModelAdmin,
    *,
    title: str,
    question: str,
    objects: list[Any],
    action: str | None = None,
    button: str = "Yes, do it",
    step_rows: list[Any] | None = None,
) -> HttpResponse:
    """A confirmation page; its form posts back with ``confirmed=yes``.

    With ``action`` it posts to the change list as an admin action (the selected ids are
    kept); without, it posts to the current URL (an object's own action page).
    ``step_rows`` adds a step chooser (a radio button per step).
    """
    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "title": title,
        "question": question,
        "objects": objects,
        "action": action,
        "button": button,
        "step_rows": step_rows,
        "opts": opts,
        "app_label": opts.app_label,
        "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/workflows/confirm.html", context)


def report_error(request: HttpRequest, exc: Exception) -> None:
    """Show a service's refusal to the user."""
    messages.error(request, str(exc))


def duration(start: Any, end: Any, active: bool) -> str:
    """``end - start`` to the millisecond; still counting (to now) when ``active``."""
    if start is None:
        return "—"
    if end is None:
        if not active:
            return "—"
        return timeline.format_precise((timezone.now() - start).total_seconds()) + "…"
    return timeline.format_precise((end - start).total_seconds())


def moment(when: Any) -> SafeString:
    """A date and time to the millisecond, in the current time zone, on one line."""
    if when is None:
        return format_html("{}", "—")
    local = timezone.localtime(when)
    shown = f"{local:%Y-%m-%d %H:%M:%S}.{local.microsecond // 1000:03d}"
    return format_html(
        '<span class="wf-time" style="white-space:nowrap" title="{}">{}</span>',
        local.isoformat(),
        shown,
    )


def run_links(runs: Any) -> SafeString:
    """Links to ``runs``, each with its status."""
    rows = [(admin_link(r, f"{r.workflow_id} {str(r.pk)[:8]}"), badge(r.status)) for r in runs]
    if not rows:
        return format_html("{}", "—")
    return format_html_join(mark_safe("<br>"), "{} {}", rows)


def error_html(error: Any) -> SafeString:
    """An error record ``{"type", "message", "traceback"}`` as a heading and a traceback."""
    if not error:
        return format_html("{}", "—")
    return format_html(
        '<strong>{}</strong>: {}<pre class="wf-traceback" style="white-space:pre-wrap;'
        'max-height:30em;overflow:auto;background:#fff5f5;padding:6px">{}</pre>',
        error.get("type", "Error"),
        error.get("message", ""),
        error.get("traceback", ""),
    )


class WorkflowFilter(admin.SimpleListFilter):
    """Filter by workflow, listing the registered ones (no query on the runs table)."""

    title = "workflow"
    parameter_name = "workflow_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        """The registered workflow ids."""
        return [(wf.id, wf.id) for wf in registry.all_workflows()]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        """Runs of the chosen workflow (the ``workflows_run_workflow`` index)."""
        return queryset.filter(workflow_id=self.value()) if self.value() else queryset


#: Version labels the version filter lists at most.
MAX_VERSIONS = 50


class VersionFilter(admin.SimpleListFilter):
    """Filter by version label: those of the registered workflows and of active runs."""

    title = "version"
    parameter_name = "version"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        """The labels deployed now, and those active runs started under (a bounded read)."""
        labels = {wf.version for wf in registry.all_workflows()}
        active = WorkflowRun.objects.filter(status__in=ACTIVE_VALUES).exclude(version="")
        labels.update(active.values_list("version", flat=True).distinct()[:MAX_VERSIONS])
        choices = sorted(label for label in labels if label)[:MAX_VERSIONS]
        return [(label, label) for label in choices] + [("-", "(none)")]

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        """Runs started under the chosen label (``-``: without one)."""
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(version="" if value == "-" else value)
