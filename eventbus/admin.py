"""The console for workspaces and events: read-only pages that need nothing but this app.

Also the building blocks of a read-only console that stays fast on large tables
(:class:`CappedPaginator`, :class:`ReadOnlyAdmin`, :func:`pretty_json`), for other apps'
admin modules to build on. An app that knows more about events (what they triggered,
who emitted them) may unregister :class:`EventAdmin` and register a subclass.
"""

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import NoReverseMatch, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext

from eventbus import keys, webhooks
from eventbus.models import Event, EventKey, Webhook, Workspace


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

    @cached_property
    def estimate(self) -> int | None:
        """Once the count reached ``CAP``: how many rows there are about, as PostgreSQL's
        planner estimates them (no counting: one ``EXPLAIN``); ``None`` below the cap or
        where there is no such estimate."""
        rows = self.object_list
        if self.count < self.CAP or not isinstance(rows, QuerySet):
            return None
        if connections[rows.db].vendor != "postgresql":
            return None
        plan = json.loads(rows.order_by().values("pk").explain(format="json"))
        return max(int(plan[0]["Plan"]["Plan Rows"]), self.CAP)

    def capped_note(self, plural: str) -> str | None:
        """What to tell a reader of a list that reached the cap, or ``None``."""
        if self.count < self.CAP:
            return None
        if self.estimate is not None:
            how_many = f"about {self.estimate:,} {plural} (PostgreSQL's estimate)"
        else:
            how_many = f"at least {self.CAP:,} {plural}"
        return (
            f"There are {how_many}: the list counts and pages through the first "
            f"{self.CAP:,} only. Filter or search to narrow it."
        )


class ReadOnlyAdmin(admin.ModelAdmin):
    """Nothing is added, changed or deleted through the console; everything is seen."""

    paginator = CappedPaginator
    show_full_result_count = False
    list_per_page = 50

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Rows are written by code only."""
        return False

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        """The list; a filter or search holding a NUL is dropped, with a message.

        No row can hold a NUL (PostgreSQL refuses it even in a query), so such a filter
        matches nothing; the list is shown with the other filters kept.
        """
        bad = sorted(
            key
            for key, values in request.GET.lists()
            if "\x00" in key or any("\x00" in value for value in values)
        )
        if not bad:
            response = super().changelist_view(request, extra_context)
            changelist = getattr(response, "context_data", None) or {}
            if "cl" in changelist:
                note = changelist["cl"].paginator.capped_note(self.opts.verbose_name_plural)
                if note:
                    messages.info(request, note)  # shown by the page rendered next
            return response
        kept = request.GET.copy()
        for key in bad:
            del kept[key]
        names = ", ".join(repr(key) for key in bad)
        messages.error(
            request,
            f"The filter {names} contained a NUL character, which no value can hold: "
            "it was removed.",
        )
        query = kept.urlencode()
        return HttpResponseRedirect(request.path + (f"?{query}" if query else ""))

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Rows are written by code only."""
        return False

    @admin.display(description=mark_safe('<input type="checkbox" id="action-toggle">'))
    def action_checkbox(self, obj: Any) -> SafeString:
        """The row's checkbox, the markup Django's widget renders, without its template.

        Rendering the widget's template for each row was a third of a list page.
        """
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            helpers.ACTION_CHECKBOX_NAME,
            str(obj.pk),
            format_html(gettext("Select this object for an action - {}"), str(obj)),
        )

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


def ms_datetime(ms: int | None) -> str:
    """Unix milliseconds as a UTC date and time to the millisecond, e.g.
    ``2026-11-24 10:00:00.123 UTC`` (the number itself if no date can hold it)."""
    if ms is None:
        return "—"
    try:
        moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond // 1000:03d} UTC"


@admin.register(Workspace)
class WorkspaceAdmin(ReadOnlyAdmin):
    """Workspaces (created in code or the shell; seen here)."""

    list_display = ("slug", "name", "created_at")
    search_fields = ("slug", "name")


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    """Events: what arrived, when, with what payload, and what emitted it (as ids)."""

    list_display = ("name", "workspace", "status", "ts_shown", "created_at", "emitted_at")
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
        ("ts_shown", "created_at", "emitted_at"),
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

    @admin.display(description="ts", ordering="ts")
    def ts_shown(self, event: Event) -> SafeString:
        """When the event is (or was) due: a UTC date, with the Unix milliseconds on hover."""
        return format_html(
            '<span class="eb-ts" title="{} ms" style="white-space:nowrap">{}</span>',
            event.ts,
            ms_datetime(event.ts),
        )

    @admin.display(description="payload")
    def payload(self, event: Event) -> SafeString:
        """The data, as indented JSON."""
        return pretty_json(event.data)


@admin.register(EventKey)
class EventKeyAdmin(ReadOnlyAdmin):
    """Event keys of the HTTP event API: seen, disabled, enabled, deleted; never shown.

    Keys are created by ``manage.py create_event_key`` (only their hash is stored).
    Disabling and enabling need the "change event key" permission, deleting the
    "delete event key" one.
    """

    list_display = ("__str__", "workspace", "enabled", "prefixes", "created_at", "last_used_at")
    list_filter = ("workspace", "enabled")
    list_select_related = ("workspace",)
    search_fields = ("name",)
    fields = ("name", "workspace", "enabled", "prefixes", "created_at", "last_used_at")
    actions = ("disable_keys", "enable_keys")

    def has_manage_permission(self, request: HttpRequest) -> bool:
        """Disabling and enabling keys: the "change event key" permission."""
        return request.user.has_perm("eventbus.change_eventkey")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Deleting a key: the "delete event key" permission."""
        return request.user.has_perm("eventbus.delete_eventkey")

    @admin.action(description="Disable selected keys", permissions=["manage"])
    def disable_keys(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Refuse the selected keys from the next request on."""
        count = keys.set_enabled(queryset, False)
        self.message_user(request, f"Disabled {count} event key(s).", messages.SUCCESS)

    @admin.action(description="Enable selected keys", permissions=["manage"])
    def enable_keys(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Accept the selected keys again."""
        count = keys.set_enabled(queryset, True)
        self.message_user(request, f"Enabled {count} event key(s).", messages.SUCCESS)


class WebhookForm(forms.ModelForm):
    """The webhook's settings, checked; the secret is write-only (blank keeps it)."""

    secret = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        required=False,
        help_text="The provider's signing secret (Stripe: whsec_…). Leave blank to keep it.",
    )

    class Meta:
        model = Webhook
        fields = ("name", "workspace", "event_name", "scheme", "secret", "transform", "enabled")

    def clean_secret(self) -> str:
        """Required on creation; blank on a change keeps the stored secret."""
        secret = self.cleaned_data.get("secret") or ""
        if secret:
            return secret
        if self.instance.pk and self.instance.secret:
            return self.instance.secret
        raise forms.ValidationError("A signing secret is required.")

    def _post_clean(self) -> None:
        super()._post_clean()
        for field, problem in webhooks.check(self.instance).items():
            if field in self.fields and field not in self.errors:
                self.add_error(field, problem)


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    """Webhook endpoints ``POST /w/<id>``: configured here, with the usual permissions."""

    form = WebhookForm
    list_display = ("__str__", "workspace", "event_name", "scheme", "enabled", "url")
    list_filter = ("workspace", "scheme", "enabled")
    list_select_related = ("workspace",)
    readonly_fields = ("url", "created_at", "last_used_at")
    search_fields = ("name", "event_name")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        """The form's fields, then the URL to give the provider and the timestamps."""
        return [*WebhookForm.Meta.fields, "url", "created_at", "last_used_at"]

    @admin.display(description="URL")
    def url(self, webhook: Webhook) -> str:
        """The path to give the provider (after this site's origin)."""
        if not webhook.pk:
            return "(shown once saved)"
        try:
            return reverse("eventbus:webhook", args=[webhook.pk])
        except NoReverseMatch:
            return "(include eventbus.urls in the URLconf)"
