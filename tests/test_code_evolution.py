"""Code evolution in process: ctx.patched, versions, pausing, resume_run, check_workflows.

A "deploy" here swaps the function registered under a workflow id between two
executions of a run (the real-worker version is tests/test_deploys.py).
"""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

import eventbus
import workflows
from tests.conftest import run_command as call_command_out
from tests.testapp.models import LedgerEntry
from tests.testapp.workflows import write_ledger
from workflows import lifecycle, registry, services
from workflows.exceptions import NotResumableError
from workflows.models import RunStatus, StepKind, StepResult, WorkflowRun
from workflows.testing import drain, no_broker

pytestmark = pytest.mark.django_db

WF = "h17-inproc"


@pytest.fixture
def deploy():
    """``deploy(fn, **options)``: register ``fn`` as the workflow ``WF`` (replacing it)."""

    def register(fn, **options):
        registry.unregister(WF)
        return registry.workflow(id=WF, trigger="h17/inproc", **options)(fn)

    yield register
    registry.unregister(WF)


def start(data=None) -> WorkflowRun:
    with no_broker():
        event_id = eventbus.send("h17/inproc", data or {})
    return WorkflowRun.objects.get(event_id=event_id, workflow_id=WF)


def settle(run: WorkflowRun, skip_time: bool = False) -> WorkflowRun:
    drain(skip_time=skip_time)
    run.refresh_from_db()
    return run


def v1(ctx):
    ctx.step.run("a", write_ledger, ctx, "a")
    ctx.step.sleep("nap", "1h")
    ctx.step.run("b", write_ledger, ctx, "b")
    return {"path": "old"}


def v2(ctx):
    ctx.step.run("a", write_ledger, ctx, "a")
    new = ctx.patched("add-c")
    if new:
        ctx.step.run("c", write_ledger, ctx, "c")
    ctx.step.sleep("nap", "1h")
    ctx.step.run("b", write_ledger, ctx, "b")
    return {"path": "new" if new else "old"}


def v3(ctx):
    ctx.step.run("a", write_ledger, ctx, "a")
    ctx.deprecate_patch("add-c")
    ctx.step.run("c", write_ledger, ctx, "c")
    ctx.step.sleep("nap", "1h")
    ctx.step.run("b", write_ledger, ctx, "b")
    return {"path": "new"}


def unpatched(ctx):
    ctx.step.run("a", write_ledger, ctx, "a")
    ctx.step.run("c", write_ledger, ctx, "c")  # added without ctx.patched
    ctx.step.sleep("nap", "1h")
    ctx.step.run("b", write_ledger, ctx, "b")
    return {"path": "new"}


def markers(run):
    return list(run.steps.filter(kind=StepKind.PATCH).values_list("step_id", "position"))


def test_patched_keeps_old_runs_on_the_old_path_and_new_runs_on_the_new(deploy):
    deploy(v1)
    old = settle(start())
    assert old.status == RunStatus.SLEEPING
    deploy(v2)
    new = settle(start())  # a, the marker, c, then asleep
    assert new.status == RunStatus.SLEEPING and markers(new) == [("add-c", 1)]
    old, new = settle(old, skip_time=True), settle(new, skip_time=True)
    assert old.output == {"path": "old"} and markers(old) == []
    assert new.output == {"path": "new"}  # replayed after the sleep: the marker decided
    assert not LedgerEntry.objects.filter(run_id=str(old.pk), step="c").exists()
    assert LedgerEntry.objects.filter(run_id=str(new.pk), step="c").count() == 1


def test_deprecate_patch_replays_runs_with_and_without_the_marker(deploy):
    deploy(v2)
    marked = settle(start())
    deploy(v3)
    fresh = settle(start())
    assert markers(fresh) == []
    marked, fresh = settle(marked, skip_time=True), settle(fresh, skip_time=True)
    assert (marked.status, fresh.status) == (RunStatus.COMPLETED, RunStatus.COMPLETED)
    assert LedgerEntry.objects.filter(run_id=str(marked.pk), step="c").count() == 1


def test_a_step_added_without_a_patch_is_a_non_determinism(deploy):
    deploy(v1)
    run = settle(start())
    deploy(unpatched)
    run = settle(run, skip_time=True)
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "NonDeterminismError" and run.error["step_id"] == "c"
    assert "ctx.patched" in run.error["message"]
    # The same change after the sleep the run is in is compatible: nothing recorded there.
    deploy(v1)
    later = settle(start())

    def appended(ctx):
        v1(ctx)
        ctx.step.run("d", write_ledger, ctx, "d")
        return {"path": "appended"}

    deploy(appended)
    assert settle(later, skip_time=True).output == {"path": "appended"}


def test_patches_in_loops_answer_once_and_record_one_marker(deploy):
    def loop_v1(ctx):
        for i in range(3):
            ctx.step.run("item", write_ledger, ctx, f"item{i}")
            if i == 0:
                ctx.step.sleep("nap", "1h")
        return {"extra": 0}

    def loop_v2(ctx):
        extra = 0
        for i in range(3):
            if ctx.patched("extra-in-loop"):
                ctx.step.run("extra", write_ledger, ctx, f"extra{i}")
                extra += 1
            ctx.step.run("item", write_ledger, ctx, f"item{i}")
            if i == 0:
                ctx.step.sleep("nap", "1h")
        return {"extra": extra}

    deploy(loop_v1)
    old = settle(start())
    deploy(loop_v2)
    new = settle(start())
    old, new = settle(old, skip_time=True), settle(new, skip_time=True)
    assert old.output == {"extra": 0} and new.output == {"extra": 3}
    assert markers(new) == [("extra-in-loop", 0)]


def test_patches_around_and_inside_parallel_branches(deploy):
    def par_v1(ctx):
        ctx.step.run("a", write_ledger, ctx, "a")
        ctx.step.sleep("nap", "1h")
        return ctx.step.parallel("fan", [lambda: "old", lambda: "old"])

    def par_v2(ctx):
        ctx.step.run("a", write_ledger, ctx, "a")
        new = ctx.patched("new-branches")
        ctx.step.sleep("nap", "1h")

        def branch():
            # Inside a branch (a step's function): runs on the current code, records nothing.
            return ("new" if new else "old", ctx.patched("inside"))

        return ctx.step.parallel("fan", [branch, branch])

    deploy(par_v1)
    old = settle(start())
    deploy(par_v2)
    new = settle(start())
    old, new = settle(old, skip_time=True), settle(new, skip_time=True)
    assert old.output == [["old", True], ["old", True]]
    assert new.output == [["new", True], ["new", True]]
    assert markers(new) == [("new-branches", 1)]
    assert not StepResult.objects.filter(kind=StepKind.PATCH, step_id="inside").exists()


def test_one_patch_id_at_two_places_is_a_clear_error(deploy):
    def twice(ctx):
        ctx.patched("same")
        ctx.patched("same")

    deploy(twice)
    run = settle(start())
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "StepUsageError"
    assert "ctx.patched('same') at " in run.error["message"]
    assert "this patch id is already used at" in run.error["message"]

    def bad_id(ctx):
        ctx.patched("")

    deploy(bad_id)
    assert "the patch id must be a non-empty string" in settle(start()).error["message"]


def test_version_labels_and_options_are_checked(deploy):
    deploy(v1, version="2025-06")
    run = start()
    assert run.version == "2025-06"
    deploy(v1)
    assert start().version == ""
    assert list(services.select_runs(version="2025-06")) == [run]
    assert str(run.pk) in call_command_out("list_runs", "--workflow-version", "2025-06")
    assert str(run.pk) not in call_command_out("list_runs", "--workflow-version", "")


def paused_run(deploy) -> WorkflowRun:
    deploy(v1, on_nondeterminism="pause")
    run = settle(start())
    deploy(unpatched, on_nondeterminism="pause")
    return settle(run, skip_time=True)


def test_a_pausing_workflow_pauses_holding_nothing_and_resumes_on_current_code(deploy):
    run = paused_run(deploy)
    assert run.status == RunStatus.PAUSED and not run.is_finished
    assert (run.lease_owner, run.due_at, run.wake_at) == (None, None, None)
    assert run.error["step_id"] == "c" and run.error["called"] == "step.run"
    assert run.error["recorded"] == "nothing here; next, sleep step 'nap'"
    now = timezone.now()
    assert not WorkflowRun.objects.runnable(now + timedelta(days=1)).filter(pk=run.pk).exists()
    assert not WorkflowRun.objects.due(now + timedelta(days=1)).filter(pk=run.pk).exists()
    assert run in WorkflowRun.objects.active()
    # Its timeouts do not run out while it waits for someone.
    WorkflowRun.objects.filter(pk=run.pk).update(timeout_at=now - timedelta(seconds=1))
    assert lifecycle.expire_timeouts(100) == 0
    WorkflowRun.objects.filter(pk=run.pk).update(timeout_at=None)
    # Resumed on code that still does not fit: paused again.
    assert workflows.resume_run(run.pk).status == RunStatus.QUEUED
    assert settle(run).status == RunStatus.PAUSED
    # Resumed on code that fits: it finishes where it stopped.
    deploy(v2, on_nondeterminism="pause")
    assert "Resumed run" in call_command_out("resume_run", str(run.pk))
    run = settle(run, skip_time=True)
    assert run.status == RunStatus.COMPLETED and run.output == {"path": "old"}
    assert run.error is None
    with pytest.raises(NotResumableError, match="is completed, not paused"):
        workflows.resume_run(run.pk)
    with pytest.raises(CommandError, match="not paused"):
        call_command("resume_run", str(run.pk))


def test_a_paused_run_can_be_cancelled_or_replayed_from_a_step(deploy):
    run = paused_run(deploy)
    replay = services.replay_run(run.pk, from_step="nap")
    assert list(replay.steps.values_list("step_id", flat=True)) == ["a"]
    replay = settle(replay, skip_time=True)
    assert replay.status == RunStatus.COMPLETED and replay.output == {"path": "new"}
    assert workflows.cancel_run(run.pk) is True
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED


def test_check_workflows_lists_what_would_break_and_writes_nothing(deploy):
    deploy(v1, on_nondeterminism="pause")
    fits, breaks = settle(start()), settle(start())
    deploy(v2, on_nondeterminism="pause")
    patched_new = settle(start())
    queued = start()  # never executed: its first step would run its body
    orphan = WorkflowRun.objects.create(
        workspace=fits.workspace, event=fits.event, workflow_id="gone", is_replay=True
    )
    StepResult.objects.filter(run=fits, step_id="a").update(kind=StepKind.SLEEP)  # a: run → sleep
    bodies = []

    def v2_counting(ctx):  # v2, whose steps' bodies say when they run
        ctx.step.run("a", bodies.append, "a")
        if ctx.patched("add-c"):
            ctx.step.run("c", bodies.append, "c")
        ctx.step.sleep("nap", "1h")
        ctx.step.run("b", bodies.append, "b")

    deploy(v2_counting, on_nondeterminism="pause")
    memos_before = list(StepResult.objects.order_by("pk").values_list("pk", "status", "kind"))
    ledger_before = LedgerEntry.objects.count()
    found = [f for f in services.check_workflows(batch_size=2) if hasattr(f, "reason")]
    assert {f.run_id: f.step_id for f in found} == {fits.pk: "a", orphan.pk: ""}
    assert "not registered" in next(f.reason for f in found if f.run_id == orphan.pk)
    assert memos_before == list(
        StepResult.objects.order_by("pk").values_list("pk", "status", "kind")
    )
    assert LedgerEntry.objects.count() == ledger_before and bodies == []  # no step body ran
    assert breaks.pk not in {f.run_id for f in found}
    assert {queued.pk, patched_new.pk}.isdisjoint(f.run_id for f in found)
    with pytest.raises(CommandError, match="2 of 5 active run"):
        call_command_out("check_workflows")
    with pytest.raises(CommandError, match="1 of 4 active run"):
        call_command_out("check_workflows", "--workflow", WF)
    StepResult.objects.filter(run=fits, step_id="a").update(kind=StepKind.RUN)
    assert "All 4 active run(s) fit" in call_command_out("check_workflows", "--workflow", WF)


def test_check_workflows_refuses_writes_outside_steps(deploy):
    def writes(ctx):
        ctx.step.run("a", write_ledger, ctx, "a")
        LedgerEntry.objects.create(run_id=ctx.run_id, step="outside", attempt=0, pid=0)
        ctx.step.sleep("nap", "1h")

    deploy(v1)
    run = settle(start())
    deploy(writes)
    (found,) = [f for f in services.check_workflows() if hasattr(f, "reason")]
    assert found.run_id == run.pk and "writes to the database outside a step" in found.reason
    assert not LedgerEntry.objects.filter(step="outside").exists()


def test_admin_shows_the_mismatch_filters_by_version_and_resumes_with_its_permission(
    client, deploy
):
    from django.contrib.auth.models import Permission, User
    from django.urls import reverse

    run = paused_run(deploy)
    WorkflowRun.objects.filter(pk=run.pk).update(version="2025-06")
    perm = Permission.objects.get(codename="resume_run")  # created with the migrations
    view = Permission.objects.get(codename="view_workflowrun")
    user = User.objects.create_user("ops", password="pw", is_staff=True)
    user.user_permissions.add(view)
    client.force_login(user)
    page = client.get(reverse("admin:workflows_workflowrun_change", args=[run.pk])).content
    text = page.decode()
    assert "Paused at" in text and "nothing here; next, sleep step" in text
    assert "step.run" in text and "Resume…" not in text
    changelist = reverse("admin:workflows_workflowrun_changelist")
    listed = client.get(changelist, {"version": "2025-06"}).content.decode()
    assert str(run.pk)[:8] in listed and "resume_runs" not in listed
    assert str(run.pk)[:8] not in client.get(changelist, {"version": "-"}).content.decode()
    resume_url = reverse("admin:workflows_workflowrun_resume", args=[run.pk])
    assert client.post(resume_url, {"confirmed": "yes"}).status_code == 403

    user.user_permissions.add(perm)
    user = User.objects.get(pk=user.pk)  # drop the permission cache
    client.force_login(user)
    assert (
        "Resume…"
        in client.get(reverse("admin:workflows_workflowrun_change", args=[run.pk])).content.decode()
    )
    confirm = client.post(changelist, {"action": "resume_runs", "_selected_action": [run.pk]})
    assert "Yes, resume" in confirm.content.decode()
    run.refresh_from_db()
    assert run.status == RunStatus.PAUSED
    done = client.post(
        changelist,
        {"action": "resume_runs", "_selected_action": [run.pk], "confirmed": "yes"},
        follow=True,
    )
    assert "Resumed 1 run(s)" in done.content.decode()
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
