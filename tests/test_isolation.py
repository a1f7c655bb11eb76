"""Isolation: workspaces never leak, and the broker only ever carries JSON.

The contract scopes *data* by workspace: a run emits only into its own workspace, and
every command or service that takes ``--workspace``/``workspace=`` refuses an id from
another one. Staff users of the admin see every workspace (the admin has no per-workspace
users); what the admin must keep is that its replays stay in the workspace of the run or
event they replay. Each path is tried here, with rows counted to show nothing leaked.
"""

import os
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

import eventbus
from eventbus.models import Event, Workspace
from tests.conftest import finish_run as finish
from tests.conftest import run_command as command
from tests.conftest import start_run as start
from tests.conftest import wait_until
from workflows import services, testing, workflow
from workflows.exceptions import WrongWorkspaceError
from workflows.models import RunStatus, StepResult, WorkflowRun


@workflow(id="iso-send", trigger="iso/send", retries=0)
def iso_send(ctx):
    """Sends from inside its run with plain ``eventbus.send``, into ``target`` if given."""
    target = ctx.event.data.get("target")
    ctx.step.run("send", lambda: eventbus.send("iso/inner", {"from": ctx.run_id}, workspace=target))
    ctx.step.send_event("emit", name="iso/emitted", data={"from": ctx.run_id})
    return {"workspace": ctx.workspace}


@workflow(id="iso-listen", trigger=["iso/inner", "iso/emitted"], retries=0)
def iso_listen(ctx):
    """Triggered by what ``iso-send`` emits."""
    return {"workspace": ctx.workspace}


@pytest.fixture
def spaces(db):
    """Two workspaces besides the default one."""
    return (
        Workspace.objects.create(slug="alpha", name="Alpha"),
        Workspace.objects.create(slug="beta", name="Beta"),
    )


def slugs(queryset) -> set[str]:
    return set(queryset.values_list("workspace__slug", flat=True))


# --- from inside a run -------------------------------------------------------------------
def test_a_run_sends_and_emits_only_into_its_own_workspace(spaces):
    run = finish(start("iso/send", workspace="alpha"))
    assert run.status == RunStatus.COMPLETED and run.output == {"workspace": "alpha"}
    emitted = Event.objects.filter(name__in=["iso/inner", "iso/emitted"])
    assert emitted.count() == 2 and slugs(emitted) == {"alpha"}
    listeners = WorkflowRun.objects.filter(workflow_id="iso-listen")
    assert listeners.count() == 2 and slugs(listeners) == {"alpha"}
    assert set(WorkflowRun.objects.values_list("workspace__slug", flat=True)) == {"alpha"}


@pytest.mark.parametrize("target", ["beta", "default", "nowhere"])
def test_a_run_cannot_send_into_another_workspace(spaces, target):
    run = finish(start("iso/send", {"target": target}, workspace="alpha"))
    assert run.status == RunStatus.FAILED
    assert (
        f"workflow run of workspace 'alpha' cannot send into workspace {target!r}"
        in run.error["message"]
    )
    assert (
        not Event.objects.exclude(workspace__slug="alpha")
        .exclude(name__startswith="workflows/")
        .exists()
    )
    assert not Event.objects.filter(name__in=["iso/inner", "iso/emitted"]).exists()


def test_the_same_idempotency_key_is_independent_per_workspace(spaces):
    with testing.no_broker():
        first = eventbus.send("iso/send", {}, id="order-1", workspace="alpha")
        second = eventbus.send("iso/send", {}, id="order-1", workspace="beta")
        again = eventbus.send("iso/send", {}, id="order-1", workspace="alpha")
    assert first != second and again == first
    assert Event.objects.get(pk=second).workspace.slug == "beta"


def test_wait_for_event_is_not_resolved_from_another_workspace(spaces):
    run = start("iso/wait", {"order": 7}, workspace="alpha")
    testing.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING
    with testing.no_broker():
        eventbus.send("iso/ack", {"order": 7}, workspace="beta")
    testing.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING  # an event in beta does not reach alpha's run
    with testing.no_broker():
        eventbus.send("iso/ack", {"order": 7}, workspace="alpha")
    testing.drain()
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED and run.output == {"acked_in": "alpha"}


@workflow(id="iso-wait", trigger="iso/wait", retries=0)
def iso_wait(ctx):
    """Waits for ``iso/ack`` with the same ``data.order``."""
    ack = ctx.step.wait_for_event("ack", event="iso/ack", match="data.order", timeout=3600)
    return {"acked_in": ack and ctx.workspace}


# --- commands and services with a workspace ------------------------------------------------
def test_send_event_and_list_runs_respect_workspace(spaces):
    command("send_event", "iso/emitted", "--workspace", "beta")
    command("send_event", "iso/emitted", "--workspace", "alpha")
    assert slugs(Event.objects.all()) == {"alpha", "beta"}
    out = command("list_runs", "--workspace", "beta")
    beta_run = WorkflowRun.objects.get(workspace__slug="beta")
    alpha_run = WorkflowRun.objects.get(workspace__slug="alpha")
    assert str(beta_run.pk) in out and str(alpha_run.pk) not in out


@pytest.mark.parametrize(
    "args",
    [
        ["replay_run", "{run}", "--workspace", "beta"],
        ["replay_run", "{run}", "--from-step", "send", "--workspace", "beta"],
        ["cancel_run", "{run}", "--workspace", "beta"],
        ["show_run", "{run}", "--workspace", "beta"],
        ["replay_event", "{event}", "--workspace", "beta"],
    ],
    ids=["replay_run", "replay_run-from-step", "cancel_run", "show_run", "replay_event"],
)
def test_commands_refuse_an_id_from_another_workspace(spaces, args):
    run = finish(start("iso/send", workspace="alpha"))
    before = (Event.objects.count(), WorkflowRun.objects.count(), StepResult.objects.count())
    values = [arg.format(run=run.pk, event=run.event_id) for arg in args]
    with pytest.raises(CommandError, match="belongs to workspace 'alpha', not 'beta'"):
        command(*values)
    assert (Event.objects.count(), WorkflowRun.objects.count(), StepResult.objects.count()) == (
        before
    )
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED


def test_services_refuse_a_wrong_workspace_and_replays_stay_in_theirs(spaces):
    run = start("iso/send", workspace="alpha")
    wrong = "belongs to workspace 'alpha', not 'beta'"
    with pytest.raises(WrongWorkspaceError, match=wrong):
        services.cancel_run(run.pk, workspace="beta")
    with pytest.raises(WrongWorkspaceError, match=wrong):
        services.replay_run(run.pk, workspace="beta")
    with pytest.raises(WrongWorkspaceError, match=wrong):
        services.replay_event(run.event_id, workspace="beta")
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and WorkflowRun.objects.count() == 1
    with testing.no_broker():
        replay = services.replay_run(run.pk, workspace="alpha")
        replays = services.replay_event(run.event_id)
    assert replay.workspace.slug == "alpha"
    assert {r.workspace.slug for r in replays} == {"alpha"}
    testing.drain(skip_time=True)
    assert slugs(WorkflowRun.objects.all()) == {"alpha"}
    assert slugs(Event.objects.exclude(name__startswith="workflows/")) == {"alpha"}


# --- the admin ----------------------------------------------------------------------------
@pytest.fixture
def operator(client, db):
    user = User.objects.create_superuser("root", password="pw")
    client.force_login(user)
    return client


def test_admin_workspace_filter_and_replays_keep_the_workspace(spaces, operator):
    alpha, beta = spaces
    alpha_run = finish(start("iso/send", workspace="alpha"))
    beta_run = finish(start("iso/send", workspace="beta"))
    url = reverse("admin:workflows_workflowrun_changelist")
    page = operator.get(url, {"workspace__id__exact": alpha.pk}).content.decode()
    assert str(alpha_run.pk)[:8] in page and str(beta_run.pk)[:8] not in page
    events = operator.get(
        reverse("admin:eventbus_event_changelist"), {"workspace__id__exact": beta.pk}
    ).content.decode()
    assert "iso/send" in events and str(alpha_run.event_id) not in events
    with testing.no_broker():
        response = operator.post(
            reverse("admin:workflows_workflowrun_replay", args=[beta_run.pk]), {"confirmed": "yes"}
        )
        assert response.status_code == 302
        operator.post(
            reverse("admin:eventbus_event_replay", args=[alpha_run.event_id]), {"confirmed": "yes"}
        )
        operator.post(
            url,
            {
                "index": "0",
                "action": "replay_runs",
                "_selected_action": [alpha_run.pk],
                "confirmed": "yes",
            },
        )
    replays = WorkflowRun.objects.exclude(replay_of=None)
    assert replays.count() == 3
    assert {(r.replay_of.workspace.slug, r.workspace.slug) for r in replays} == {
        ("alpha", "alpha"),
        ("beta", "beta"),
    }


# --- the broker carries JSON only ----------------------------------------------------------
class Exploit:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def publish_pickled(body: object, run_id: str) -> None:
    """Publish a Celery ``workflows.execute_run`` message serialised with pickle, by hand."""
    from kombu import Producer

    from settings.celery import app

    queue = app.amqp.queues[app.conf.task_default_queue]
    message = app.amqp.as_task_v2(uuid.uuid4().hex, "workflows.execute_run", args=(run_id,))
    with app.connection_for_write() as connection:
        Producer(connection).publish(
            body,
            serializer="pickle",
            headers=message.headers,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            retry=True,
        )


@pytest.mark.worker
def test_a_pickled_message_is_rejected_and_logged_not_executed(worker, tmp_path):
    with testing.no_broker():
        event_id = eventbus.send("test/steps", {"steps": 1})
    run = WorkflowRun.objects.get(event_id=event_id)
    # Nothing but the pickled messages may ring for this run during the test.
    WorkflowRun.objects.filter(pk=run.pk).update(due_at=timezone.now() + timedelta(hours=1))
    marker = tmp_path / "unpickled"
    publish_pickled(((str(run.pk),), {}, {}), str(run.pk))
    publish_pickled(Exploit(str(marker)), str(run.pk))
    wait_until(
        lambda: worker.log.read_text(errors="replace").count("untrusted content") >= 2,
        timeout=60,
        what="the worker to refuse both pickled messages",
    )
    log = worker.log.read_text(errors="replace")
    assert "Refusing to deserialize untrusted content of type pickle" in log, worker.tail()
    # The worker is alive and consuming: a JSON bell for another run is served.
    control = start("test/steps", {"steps": 1})
    from workflows import tasks

    tasks.execute_run.delay(str(control.pk))
    wait_until(
        lambda: WorkflowRun.objects.get(pk=control.pk).status == RunStatus.COMPLETED,
        timeout=60,
        what="the JSON message to be served",
    )
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.started_at is None
    assert not StepResult.objects.filter(run=run).exists()
    assert not marker.exists()
