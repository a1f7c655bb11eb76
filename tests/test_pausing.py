"""Stopping runaway workflows (issue 11, point 6): pause and resume, bulk cancellation,
the invoke depth limit; in-process, through the commands, the admin and a real worker."""

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import override_settings

import eventbus
import workflows
from eventbus.models import Event, Workspace
from tests.conftest import wait_until
from workflows import pausing, testing
from workflows.exceptions import ConsoleError
from workflows.models import EventSkip, PausedWorkflow, RunStatus, WorkflowRun

STEPS = "t-steps"  # tests/testapp/workflows.py: trigger test/steps


def send(name="test/steps", data=None, workspace=None):
    with testing.no_broker():
        return eventbus.send(name, data or {"steps": 1}, workspace=workspace)


@pytest.mark.django_db
def test_a_paused_workflow_starts_no_run_and_holds_its_runs_until_resumed():
    held = WorkflowRun.objects.get(event_id=send())  # queued before the pause
    assert workflows.pause_workflow(STEPS) is True
    assert workflows.pause_workflow(STEPS) is False  # already paused
    skipped = send()
    assert not WorkflowRun.objects.filter(event_id=skipped).exists()
    skip = EventSkip.objects.get(event_id=skipped)
    assert (skip.workflow_id, skip.reason) == (STEPS, "paused")
    testing.drain()
    held.refresh_from_db()
    assert held.status == RunStatus.QUEUED  # not started while paused

    assert workflows.resume_workflow(STEPS) == 1
    testing.drain()
    held.refresh_from_db()
    assert held.status == RunStatus.COMPLETED
    assert WorkflowRun.objects.filter(event_id=send()).exists()


@pytest.mark.django_db
def test_a_pause_in_one_workspace_leaves_the_others_alone():
    Workspace.objects.create(slug="alpha")
    Workspace.objects.create(slug="beta")
    workflows.pause_workflow(STEPS, workspace="alpha")
    assert not WorkflowRun.objects.filter(event_id=send(workspace="alpha")).exists()
    assert WorkflowRun.objects.filter(event_id=send(workspace="beta")).exists()
    with pytest.raises(ConsoleError, match="is not paused in workspace 'beta'"):
        workflows.resume_workflow(STEPS, workspace="beta")
    workflows.resume_workflow(STEPS, workspace="alpha")
    workflows.pause_workflow(STEPS)
    with pytest.raises(ConsoleError, match="paused in every workspace: resume it everywhere"):
        workflows.resume_workflow(STEPS, workspace="alpha")


@pytest.mark.django_db
def test_bulk_cancellation_has_no_upper_bound_and_honours_its_filters():
    with testing.no_broker():
        eventbus.send_batch([{"name": "test/steps", "data": {"steps": 1}}] * 1203)
        eventbus.send("test/exact", {})
    assert list(pausing.cancel_runs(STEPS, dry_run=True)) == [1203]
    assert list(pausing.cancel_runs(STEPS, event_name="other/name", dry_run=True)) == [0]
    assert list(pausing.cancel_runs(STEPS))[-1] == 1203  # in batches of 500
    assert (
        not WorkflowRun.objects.filter(workflow_id=STEPS)
        .exclude(status=RunStatus.CANCELLED)
        .exists()
    )
    assert WorkflowRun.objects.exclude(workflow_id=STEPS).get().status == RunStatus.QUEUED


@pytest.mark.django_db
def test_the_commands(capsys):
    send()
    call_command("pause_workflow", STEPS)
    assert "Paused t-steps in every workspace." in capsys.readouterr().out
    call_command("cancel_run", "--workflow", STEPS, "--dry-run")
    assert "1 run(s) would be cancelled." in capsys.readouterr().out
    call_command("cancel_run", "--workflow", STEPS, "--status", "queued")
    assert "Cancelled 1 run(s)." in capsys.readouterr().out
    call_command("resume_workflow", STEPS)
    assert "Resumed t-steps; 0 run(s) move on." in capsys.readouterr().out


@pytest.mark.django_db
@override_settings(WORKFLOWS={"MAX_INVOKE_DEPTH": 3})
def test_an_invoke_chain_stops_at_the_depth_limit():
    root = WorkflowRun.objects.get(event_id=send("wedge/deep", {}))
    testing.drain()
    depths = dict(WorkflowRun.objects.values_list("depth", "status"))
    assert depths == {0: "failed", 1: "failed", 2: "failed", 3: "failed"}
    deepest = WorkflowRun.objects.get(depth=3)
    error = deepest.steps.get(step_id="child").error
    assert error["type"] == "InvokeDepthExceeded"
    assert "the limit is WORKFLOWS['MAX_INVOKE_DEPTH'] = 3" in error["message"]
    root.refresh_from_db()
    assert root.error["type"] == "StepError" or "child" in root.error["message"]


@pytest.mark.django_db
def test_the_admin_page_lists_workflows_and_pausing_needs_the_permission(client):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_pausedworkflow"))
    client.force_login(viewer)
    url = "/admin/workflows/pausedworkflow/"
    page = client.get(url)
    assert page.status_code == 200 and b"t-steps" in page.content
    assert b"Pause</button>" not in page.content
    assert client.post(url + "pause/", {"workflow_id": STEPS}).status_code == 403
    viewer.user_permissions.add(Permission.objects.get(codename="pause_workflow"))
    viewer = User.objects.get(pk=viewer.pk)  # drop the permission cache
    client.force_login(viewer)
    assert client.post(url + "pause/", {"workflow_id": STEPS}).status_code == 302
    assert PausedWorkflow.objects.filter(workflow_id=STEPS, workspace=None).exists()
    assert b"<strong>paused</strong> in every workspace" in client.get(url).content
    assert client.get(url + "resume/").status_code == 405
    client.post(url + "resume/", {"workflow_id": STEPS})
    assert not PausedWorkflow.objects.exists()
    anonymous = client.__class__()
    assert anonymous.get(url).status_code == 302  # to the login page


@pytest.mark.worker
def test_a_runaway_workflow_is_stopped_by_a_pause_and_a_bulk_cancel(worker):
    eventbus.send("wedge/runaway", {})
    wait_until(lambda: WorkflowRun.objects.filter(workflow_id="w-runaway").count() > 5)
    workflows.pause_workflow("w-runaway")

    # What was executing when the pause came finishes that execution; then nothing new.
    def settled():
        before = Event.objects.filter(name="wedge/runaway").count()
        runs = WorkflowRun.objects.filter(workflow_id="w-runaway")
        return not runs.filter(status=RunStatus.RUNNING).exists() and before == (
            Event.objects.filter(name="wedge/runaway").count()
        )

    wait_until(settled, timeout=30, what=worker.tail())
    skipped = eventbus.send("wedge/runaway", {"n": -1})
    assert EventSkip.objects.filter(event_id=skipped, workflow_id="w-runaway").exists()
    count = WorkflowRun.objects.filter(workflow_id="w-runaway").count()
    call_command("cancel_run", "--workflow", "w-runaway")
    assert not WorkflowRun.objects.filter(workflow_id="w-runaway").active().exists()
    workflows.resume_workflow("w-runaway")
    assert WorkflowRun.objects.filter(workflow_id="w-runaway").count() == count
