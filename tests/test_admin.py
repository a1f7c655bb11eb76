"""The admin console: read-only pages, actions behind custom permissions, bounded queries."""

import uuid

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

import eventbus
from eventbus.models import Event, Workspace
from tests import admin_workflows, conftest
from tests.conftest import grant
from workflows import testing
from workflows.models import RunStatus, WorkflowRun

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _reset():
    admin_workflows.FLAKY["fail"] = True
    yield
    admin_workflows.FLAKY["fail"] = True


@pytest.fixture
def viewer(client):
    """Staff with view permissions only."""
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    grant(user, WorkflowRun, "view_workflowrun")
    grant(user, Event, "view_event")
    client.force_login(user)
    return user


@pytest.fixture
def operator(client):
    """Staff who may view, replay and cancel."""
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    grant(user, WorkflowRun, "view_workflowrun", "replay_run", "cancel_run")
    grant(user, Event, "view_event", "replay_event")
    client.force_login(user)
    return user


def failed_run() -> WorkflowRun:
    return conftest.failed_run(order=42)


def run_url(run: WorkflowRun, view: str = "change") -> str:
    return reverse(f"admin:workflows_workflowrun_{view}", args=[run.pk])


def test_non_staff_sees_nothing(client):
    run = failed_run()
    user = User.objects.create_user("plain", password="pw")
    grant(user, WorkflowRun, "view_workflowrun", "replay_run")
    client.force_login(user)
    for url in (
        reverse("admin:workflows_workflowrun_changelist"),
        run_url(run),
        run_url(run, "replay"),
    ):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]


def test_staff_without_view_permission_is_refused(client):
    run = failed_run()
    client.force_login(User.objects.create_user("staff", password="pw", is_staff=True))
    assert client.get(reverse("admin:workflows_workflowrun_changelist")).status_code == 403
    assert client.get(run_url(run)).status_code == 403


def test_staff_without_custom_permissions_can_look_but_not_act(client, viewer):
    run = failed_run()
    page = client.get(reverse("admin:workflows_workflowrun_changelist"))
    assert page.status_code == 200
    assert "replay_runs" not in page.content.decode() and "cancel_runs" not in page.content.decode()
    detail = client.get(run_url(run)).content.decode()
    assert "wf-timeline" in detail and "Replay…" not in detail
    assert client.get(run_url(run, "replay")).status_code == 403
    assert client.post(run_url(run, "replay"), {"confirmed": "yes"}).status_code == 403
    assert client.post(run_url(run, "cancel"), {"confirmed": "yes"}).status_code == 403
    event_replay = reverse("admin:eventbus_event_replay", args=[run.event_id])
    assert client.post(event_replay, {"confirmed": "yes"}).status_code == 403
    # An action posted by hand is refused as well.
    response = client.post(
        reverse("admin:workflows_workflowrun_changelist"),
        {"action": "replay_runs", "_selected_action": [run.pk], "confirmed": "yes"},
    )
    # Django answers an action the user may not take by showing the list again, saying
    # that no action was performed; nothing is replayed.
    assert response.status_code == 200, response.status_code
    assert WorkflowRun.objects.count() == 1


def test_everything_is_read_only(client, operator):
    run = failed_run()
    assert client.get(reverse("admin:workflows_workflowrun_add")).status_code == 403
    assert client.get(run_url(run, "delete")).status_code == 403
    before = WorkflowRun.objects.values().get(pk=run.pk)
    client.post(run_url(run), {"workflow_id": "changed", "status": "completed"})
    assert WorkflowRun.objects.values().get(pk=run.pk) == before


def test_run_page_shows_input_output_error_links_and_timeline(client, operator):
    run = failed_run()
    replay = WorkflowRun.objects.create(
        workspace=run.workspace, workflow_id=run.workflow_id, event=run.event, replay_of=run
    )
    html = client.get(run_url(run)).content.decode()
    assert "&quot;order&quot;: 42" in html  # the input, as indented JSON
    assert "card declined" in html and "Traceback" in html
    assert html.count('class="wf-tl-row wf-step"') == 3
    assert "wf-st-failed" in html and "×2" in html
    assert run_url(replay) in html and "wf-status-failed" in html
    assert run_url(run) in client.get(run_url(replay)).content.decode()  # replay_of link


def test_timeline_of_two_hundred_steps(client, operator):
    eventbus.send("adm/many", {"count": 200})
    testing.drain(skip_time=True)
    run = WorkflowRun.objects.get(workflow_id="adm-many")
    html = client.get(run_url(run)).content.decode()
    assert html.count('class="wf-tl-row wf-step"') == 200
    assert 'data-steps="200"' in html


def test_event_page_payload_source_and_triggered_runs(client, operator):
    eventbus.send("adm/steps", {"n": 3})
    testing.drain(skip_time=True)
    run = WorkflowRun.objects.get(workflow_id="adm-steps")
    emitted = Event.objects.get(name="adm/announced")
    html = client.get(reverse("admin:eventbus_event_change", args=[emitted.pk])).content.decode()
    assert run_url(run) in html and "#step-1" in html and "announce" in html
    html = client.get(reverse("admin:eventbus_event_change", args=[run.event_id])).content.decode()
    assert "&quot;n&quot;: 3" in html and run_url(run) in html
    listing = client.get(reverse("admin:eventbus_event_changelist")).content.decode()
    assert "adm/announced" in listing and "wf-status-emitted" in listing


def test_replay_from_a_step_through_the_admin(client, operator):
    run = failed_run()
    chooser = client.get(run_url(run, "replay")).content.decode()
    charge = run.steps.get(step_id="charge")
    assert f'value="{charge.key}"' in chooser and "Start from" in chooser
    response = client.post(
        run_url(run, "replay"), {"confirmed": "yes", "from_step": charge.key}, follow=True
    )
    replay = WorkflowRun.objects.get(replay_of=run)
    assert response.redirect_chain[-1][0] == run_url(replay)
    assert (
        "from step" in response.content.decode()
        and "keeping 2 step(s)" in response.content.decode()
    )
    assert list(replay.steps.values_list("step_id", flat=True)) == ["prepare", "reserve"]


def test_replay_and_cancel_actions_ask_for_confirmation_first(client, operator):
    run = failed_run()
    eventbus.send("adm/steps", {"n": 1})
    active = WorkflowRun.objects.get(workflow_id="adm-steps")
    changelist = reverse("admin:workflows_workflowrun_changelist")

    confirm = client.post(changelist, {"action": "replay_runs", "_selected_action": [run.pk]})
    assert confirm.status_code == 200 and "Yes, replay" in confirm.content.decode()
    assert not WorkflowRun.objects.filter(replay_of=run).exists()
    done = client.post(
        changelist,
        {"action": "replay_runs", "_selected_action": [run.pk], "confirmed": "yes"},
        follow=True,
    )
    assert "Replayed 1 run(s)" in done.content.decode()
    assert WorkflowRun.objects.filter(replay_of=run).count() == 1

    client.post(changelist, {"action": "cancel_runs", "_selected_action": [active.pk]})
    active.refresh_from_db()
    assert active.status == RunStatus.QUEUED
    done = client.post(
        changelist,
        {"action": "cancel_runs", "_selected_action": [active.pk], "confirmed": "yes"},
        follow=True,
    )
    active.refresh_from_db()
    assert active.status == RunStatus.CANCELLED and "Cancelled 1 run(s)" in done.content.decode()


def test_replay_event_action(client, operator):
    event_id = eventbus.send("adm/steps", {"n": 1})
    url = reverse("admin:eventbus_event_replay", args=[event_id])
    assert "Yes, replay" in client.get(url).content.decode()
    done = client.post(url, {"confirmed": "yes"}, follow=True)
    assert "started 1 run(s)" in done.content.decode()
    assert WorkflowRun.objects.filter(event_id=event_id).count() == 2


def test_superuser_has_the_custom_permissions(admin_client):
    run = failed_run()
    assert "Replay…" in admin_client.get(run_url(run)).content.decode()


def test_search_by_run_id_and_event_id(client, operator):
    run = failed_run()
    changelist = reverse("admin:workflows_workflowrun_changelist")
    assert str(run.pk)[:8] in client.get(changelist, {"q": str(run.event_id)}).content.decode()
    assert str(run.pk)[:8] not in client.get(changelist, {"q": str(uuid.uuid4())}).content.decode()
    events = reverse("admin:eventbus_event_changelist")
    assert "adm/flaky" in client.get(events, {"q": "adm/fl"}).content.decode()


def test_run_list_queries_do_not_grow_with_rows(client, operator, django_assert_max_num_queries):
    workspace = Workspace.objects.get_or_create(slug="default")[0]
    now = timezone.now()
    events = Event.objects.bulk_create(
        [Event(workspace=workspace, name="adm/bulk", ts=0, created_at=now) for _ in range(300)]
    )
    WorkflowRun.objects.bulk_create(
        [
            WorkflowRun(workspace=workspace, workflow_id=workflow, event=event, status=status)
            for event in events
            for workflow, status in (("adm-steps", "completed"), ("adm-flaky", "failed"))
        ]
    )
    changelist = reverse("admin:workflows_workflowrun_changelist")
    for params in ({}, {"status__exact": "failed"}, {"workflow_id": "adm-steps"}, {"p": "3"}):
        with django_assert_max_num_queries(8) as captured:
            response = client.get(changelist, params)
        assert response.status_code == 200
        sql = " ".join(q["sql"] for q in captured.captured_queries)
        # Only a bounded count (over a LIMITed subquery), never a whole-table COUNT.
        assert sql.count("COUNT(") <= 1 and "LIMIT 10000" in sql
    with django_assert_max_num_queries(8):
        assert client.get(reverse("admin:eventbus_event_changelist")).status_code == 200


def test_acting_on_one_run_or_event_needs_seeing_it(client):
    """A user who may cancel and replay, but not view, gets nothing from the action pages."""
    eventbus.send("adm/steps", {"n": 1})
    testing.drain()
    active = WorkflowRun.objects.get(workflow_id="adm-steps")
    user = User.objects.create_user("blind", password="pw", is_staff=True)
    grant(user, WorkflowRun, "replay_run", "cancel_run")
    grant(user, Event, "replay_event")
    client.force_login(user)
    for url in (run_url(active, "cancel"), run_url(active, "replay")):
        assert client.get(url).status_code == 403
        assert client.post(url, {"confirmed": "yes"}).status_code == 403
    event_replay = reverse("admin:eventbus_event_replay", args=[active.event_id])
    assert client.post(event_replay, {"confirmed": "yes"}).status_code == 403
    active.refresh_from_db()
    assert active.status == RunStatus.SLEEPING
    assert WorkflowRun.objects.count() == 1


@pytest.mark.parametrize(
    ("page", "params"),
    [
        ("workflows_workflowrun", {"workflow_id": "\x00"}),
        ("workflows_workflowrun", {"status__exact": "fa\x00iled", "workspace__id__exact": "1"}),
        ("workflows_workflowrun", {"q": "\x00"}),
        ("workflows_stepresult", {"status__exact": "\x00"}),
        ("eventbus_event", {"name": "adm/\x00"}),
        ("eventbus_event", {"q": "key\x00"}),
        ("eventbus_workspace", {"q": "\x00"}),
    ],
)
def test_a_nul_in_a_list_filter_is_dropped_with_a_message(client, page, params):
    failed_run()
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin)
    response = client.get(reverse(f"admin:{page}_changelist"), params, follow=True)
    assert response.status_code == 200
    assert "contained a NUL character" in response.content.decode()
    # The other filters are kept.
    kept = "&".join(f"{k}={v}" for k, v in params.items() if "\x00" not in v)
    assert response.redirect_chain[-1][0].endswith(f"?{kept}" if kept else "/")


def result_rows(response) -> str:
    """The table of a change list (not its filters)."""
    html = response.content.decode()
    return html.split('id="result_list"', 1)[1].split("</table>", 1)[0]


def test_event_ts_is_a_date_and_engine_events_are_hidden_by_default(client, operator):
    failed_run()  # emits workflows/run.failed
    engine = Event.objects.get(name="workflows/run.failed")
    trigger = Event.objects.get(name="adm/flaky")
    Event.objects.filter(pk=trigger.pk).update(ts=1_764_000_000_123)
    events = reverse("admin:eventbus_event_changelist")
    response = client.get(events)
    listing = result_rows(response)
    assert "adm/flaky" in listing and "workflows/run.failed" not in listing
    assert "2025-11-24 16:00:00.123 UTC" in listing and "1764000000123 ms" in listing
    assert "engine events (workflows/…)" in response.content.decode()
    shown = result_rows(client.get(events, {"origin": "engine"}))
    assert "workflows/run.failed" in shown and "adm/flaky" not in shown
    both = result_rows(client.get(events, {"origin": "all"}))
    assert "workflows/run.failed" in both and "adm/flaky" in both
    # Looking one up by its id finds it whatever the origin filter says.
    assert "workflows/run.failed" in result_rows(client.get(events, {"q": str(engine.pk)}))
    detail = client.get(reverse("admin:eventbus_event_change", args=[trigger.pk])).content.decode()
    assert "2025-11-24 16:00:00.123 UTC" in detail


def test_a_cancelled_runs_sleep_step_is_shown_cancelled(admin_client):
    client = admin_client
    eventbus.send("adm/steps", {"n": 1})
    testing.drain()
    run = WorkflowRun.objects.get(workflow_id="adm-steps")
    assert run.status == RunStatus.SLEEPING
    client.post(run_url(run, "cancel"), {"confirmed": "yes"})
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    page = client.get(run_url(run)).content.decode()
    (pause,) = [row for row in page.split('class="wf-tl-row wf-step"')[1:] if "pause" in row[:600]]
    assert "wf-st-cancelled" in pause and "sleeping" not in pause.split("</div>\n  </div>")[0]
    steps = reverse("admin:workflows_stepresult_changelist")
    listing = result_rows(client.get(steps, {"q": str(run.pk)}))
    assert "wf-status-cancelled" in listing and "wf-status-sleeping" not in listing


def test_a_list_that_reaches_the_count_cap_says_how_many_there_are_about(
    client, viewer, monkeypatch
):
    from django.db import connection

    from eventbus.admin import CappedPaginator

    monkeypatch.setattr(CappedPaginator, "CAP", 3)
    url = reverse("admin:eventbus_event_changelist")
    with testing.no_broker():
        eventbus.send_batch([{"name": "admin/capped"}] * 2)
    below = client.get(url)
    assert "the list counts and pages through" not in below.content.decode()
    with testing.no_broker():
        eventbus.send_batch([{"name": "admin/capped"}] * 10)
    page = client.get(url).content.decode()
    assert "the list counts and pages through the first 3 only" in page
    if connection.vendor == "postgresql":
        # The planner's estimate: positive and at least the cap, never a count.
        assert "(PostgreSQL&#x27;s estimate)" in page and "There are about " in page
    else:
        assert "There are at least 3 events" in page
