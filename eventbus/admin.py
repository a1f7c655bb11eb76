"""The console for workspaces and events: read-only pages that need nothing but this app.

Also the building blocks of a read-only console that stays fast on large tables
(:class:`CappedPaginator`, :class:`ReadOnlyAdmin`, :func:`pretty_json`), for other apps'
admin modules to build on. An app that knows more about events (what they triggered,
who emitted them) may unregister :class:`EventAdmin` and register a subclass.
"""

import json
import uuid
from typing import Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString

from eventbus.models import Event, Workspace


class CappedPaginator(Paginator):
    """Counts at most ``CAP`` rows, so a list page never counts a whole large table.

    With ``show_full_result_count = False`` the admin asks only for this count; pages
    beyond the cap are reached by filtering, which every list offers.
    """

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        """The number of rows, or ``CAP`` if there are at least that many."""
        if isinstance(self.object_list, QuerySet):
            # SELECT COUNT(*) FROM (SELECT … LIMIT CAP): bounded work on any table size.
            return self.object_list[: self.CAP].count()
        return min(len(self.object_list), self.CAP)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Nothing is added, changed or deleted through the console; everything is seen."""

    paginator = CappedPaginator
    show_full_result_count = False
    list_per_page = 50

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Rows are written by code only."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Rows are written by code only."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Deleting is the retention jobs' business, not the console's."""
        return False


def pretty_json(value: Any) -> SafeString:
    """``value`` as indented JSON in a ``<pre>`` block."""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return format_html(
        '<pre class="wf-json" style="margin:0;white-space:pre-wrap;max-height:40em;'
        'overflow:auto">{}</pre>',
        text,
    )


@admin.register(Workspace)
class WorkspaceAdmin(ReadOnlyAdmin):
    """Workspaces (created in code or the shell; seen here)."""

    list_display = ("slug", "name", "created_at")
    search_fields = ("slug", "name")


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    """Events: what arrived, when, with what payload, and what emitted it (as ids)."""

    list_display = ("name", "workspace", "status", "ts", "created_at", "emitted_at")
    list_filter = ("workspace", "status", ("created_at", admin.DateFieldListFilter))
    list_select_related = ("workspace",)
    # Sorting by an unindexed column would sort the whole table: keep the index order.
    sortable_by = ("created_at",)
    search_fields = ("id",)
    search_help_text = "An event id, an idempotency key, or an event name (or its beginning)."
    fields = (
        "id",
        "name",
        "workspace",
        "status",
        ("ts", "created_at", "emitted_at"),
        "idempotency_key",
        "payload",
        ("source_run_id", "source_step_id"),
    )

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> Any:
        """Exact, index-backed lookups only: a ``LIKE '%…%'`` would scan the table."""
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(pk=uuid.UUID(term)), False
        except ValueError:
            pass
        by_key = queryset.filter(idempotency_key=term)
        return by_key | queryset.filter(name__startswith=term), False

    @admin.display(description="payload")
    def payload(self, event: Event) -> SafeString:
        """The data, as indented JSON."""
        return pretty_json(event.data)
