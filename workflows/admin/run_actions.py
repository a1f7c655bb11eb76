"""The run page's actions: replay, replay from a step, cancel and resume, on selected
runs (admin actions) and on one run (the buttons of its page).

Each needs its custom permission (``workflows.replay_run``, ``workflows.cancel_run``,
``workflows.resume_run``) and, on one run's page, the view permission too; each asks
for confirmation first, calls :mod:`workflows.services` and reports what it did.
"""

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html

from workflows import services
from workflows.admin.console import (
    admin_link,
    confirm,
    report_error,
)
from workflows.exceptions import ConsoleError
from workflows.models import WorkflowRun

#: The admin refuses bulk actions on more runs than this (use ``replay_run --workflow``).
MAX_BULK_ACTION = 1000
#: Steps offered by the replay-from-a-step chooser.
MAX_CHOOSER_STEPS = 2000


class RunActions:
    """Mixed into :class:`~workflows.admin.runs.WorkflowRunAdmin` (a ``ModelAdmin``)."""

    # --- permissions -------------------------------------------------------------------
    def has_replay_run_permission(self, request: HttpRequest) -> bool:
        """May replay runs (custom permission ``workflows.replay_run``)."""
        return request.user.has_perm("workflows.replay_run")

    def has_cancel_run_permission(self, request: HttpRequest) -> bool:
        """May cancel runs (custom permission ``workflows.cancel_run``)."""
        return request.user.has_perm("workflows.cancel_run")

    def has_resume_run_permission(self, request: HttpRequest) -> bool:
        """May resume paused runs (custom permission ``workflows.resume_run``)."""
        return request.user.has_perm("workflows.resume_run")

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

    @admin.action(description="Resume selected paused runs", permissions=["resume_run"])
    def resume_runs(self, request: HttpRequest, queryset: Any) -> HttpResponse | None:
        """Resume each selected paused run on the code deployed now, after confirmation."""
        runs = _bounded(request, queryset)
        if runs is None:
            return None
        if request.POST.get("confirmed") != "yes":
            return confirm(
                request,
                self,
                title="Resume runs",
                question=f"Resume these {len(runs)} run(s) on the code deployed now? A run "
                "that still does not fit the code is paused again; runs that are not paused "
                "are left as they are.",
                objects=runs,
                action="resume_runs",
                button="Yes, resume",
            )
        done = 0
        for run in runs:
            try:
                services.resume_run(run.pk)
                done += 1
            except ConsoleError as exc:
                report_error(request, exc)
        self.message_user(request, f"Resumed {done} run(s).", messages.SUCCESS)
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
            path(
                "<uuid:object_id>/resume/",
                wrap(self.resume_view),
                name="workflows_workflowrun_resume",
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
            "can_resume": self.has_resume_run_permission(request),
            **(extra_context or {}),
        }
        return super().change_view(request, object_id, form_url, extra)

    def replay_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Replay one run, from the start or from a chosen step, after confirmation."""
        # The page shows the run: acting on a run needs seeing it too.
        if not (self.has_view_permission(request) and self.has_replay_run_permission(request)):
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
        steps = list(run.steps.defer("output", "error").order_by("position")[:MAX_CHOOSER_STEPS])
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
        if not (self.has_view_permission(request) and self.has_cancel_run_permission(request)):
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

    def resume_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Resume one paused run on the code deployed now, after confirmation."""
        if not self.has_resume_run_permission(request):
            raise PermissionDenied
        run = self.get_object(request, str(object_id))
        if run is None:
            return self._not_found(request, object_id)
        if request.method == "POST" and request.POST.get("confirmed") == "yes":
            try:
                services.resume_run(run.pk)
            except ConsoleError as exc:
                report_error(request, exc)
            else:
                self.message_user(request, f"Resumed run {run.pk}.", messages.SUCCESS)
            return HttpResponseRedirect(
                reverse("admin:workflows_workflowrun_change", args=[run.pk])
            )
        return confirm(
            request,
            self,
            title=f"Resume run {str(run.pk)[:8]}",
            question="Resume this paused run on the code deployed now? If its recorded "
            "steps still do not fit the code, it is paused again.",
            objects=[run],
            button="Yes, resume",
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
