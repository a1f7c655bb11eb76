"""The "Workflows" page: every registered workflow, whether it is paused, and the pause
and resume buttons (permission ``workflows.pause_workflow``)."""

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from eventbus.models import Workspace
from workflows import pausing, registry
from workflows.admin.console import report_error
from workflows.exceptions import ConsoleError
from workflows.models import PausedWorkflow, WorkflowRun


@admin.register(PausedWorkflow)
class PausedWorkflowAdmin(admin.ModelAdmin):
    """Lists the registered workflows (not the pause rows) with their state."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Pauses are made with the buttons, not a form."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Pauses are not edited."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """A pause ends with the resume button."""
        return False

    def has_pause_permission(self, request: HttpRequest) -> bool:
        """May pause and resume workflows (custom permission ``workflows.pause_workflow``)."""
        return request.user.has_perm("workflows.pause_workflow")

    def get_urls(self) -> list[Any]:
        """The pause and resume endpoints (POST only)."""
        view = self.admin_site.admin_view
        return [
            path("pause/", view(self.pause_view), name="workflows_pausedworkflow_pause"),
            path("resume/", view(self.resume_view), name="workflows_pausedworkflow_resume"),
            *super().get_urls(),
        ]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        """Every registered workflow: triggers, active runs, where it is paused."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        pauses: dict[str, list[str]] = {}
        for workflow_id, slug in PausedWorkflow.objects.values_list(
            "workflow_id", "workspace__slug"
        ):
            pauses.setdefault(workflow_id, []).append(slug or "every workspace")
        active = dict(
            WorkflowRun.objects.active()
            .values("workflow_id")
            .annotate(n=Count("pk"))
            .values_list("workflow_id", "n")
        )
        rows = [
            {
                "id": wf.id,
                "triggers": ", ".join(wf.triggers) or "—",
                "active": active.get(wf.id, 0),
                "paused_in": sorted(pauses.get(wf.id, [])),
            }
            for wf in sorted(registry.all_workflows(), key=lambda wf: wf.id)
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Workflows",
            "opts": self.model._meta,
            "rows": rows,
            "workspaces": list(Workspace.objects.values_list("slug", flat=True)[:200]),
            "can_pause": self.has_pause_permission(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/workflows/pausedworkflow/registered.html", context)

    def _act(self, request: HttpRequest, action: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponse(status=405, headers={"Allow": "POST"})
        if not (self.has_view_permission(request) and self.has_pause_permission(request)):
            raise PermissionDenied
        workflow_id = request.POST.get("workflow_id", "")
        workspace = request.POST.get("workspace") or None
        try:
            if action == "pause":
                done = pausing.pause_workflow(workflow_id, workspace=workspace)
                text = f"Paused {workflow_id}." if done else f"{workflow_id} was paused already."
            else:
                moved = pausing.resume_workflow(workflow_id, workspace=workspace)
                text = f"Resumed {workflow_id}; {moved} run(s) move on."
            self.message_user(request, text, messages.SUCCESS)
        except ConsoleError as exc:
            report_error(request, exc)
        return HttpResponseRedirect(reverse("admin:workflows_pausedworkflow_changelist"))

    def pause_view(self, request: HttpRequest) -> HttpResponse:
        """Pause a workflow (everywhere, or in the workspace chosen)."""
        return self._act(request, "pause")

    def resume_view(self, request: HttpRequest) -> HttpResponse:
        """Resume a workflow (everywhere, or in the workspace chosen)."""
        return self._act(request, "resume")
