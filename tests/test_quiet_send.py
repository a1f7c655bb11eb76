"""PostgreSQL: an event sent alone, that needs nothing but its runs stored, is stored
with its runs in one round trip (``workflows.subscribers.start_quietly``).

Outside a transaction, when the event bus has only the engine's subscribers and the
event's workflows have no flow control, no admission options and no ``cancel_on``, a
``send`` needs the event's row, a row per run and two questions: is a wait for the
event recorded in its workspace, is one of the workflows paused there? One message of
two statements answers both under the emitters' lock and writes the rows only if
neither is so, in one transaction; otherwise nothing is written and the event is
stored and delivered the ordinary way, which resolves the wait or records the skip.
"""

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

import eventbus
from eventbus import bus
from eventbus.models import Event, EventStatus, Workspace
from tests.conftest import racing_a_wait
from tests.conftest import start_run as start
from workflows import engine, registry, workflow
from workflows.models import EventSkip, RunStatus, StepStatus, Wait, WorkflowRun
from workflows.pausing import pause_workflow
from workflows.testing import no_broker

pytestmark = [
    pytest.mark.django_db(transaction=True),  # as a web view: no test transaction around it
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the PostgreSQL fast path"),
]


def sending(name: str, data: dict | None = None, **options) -> tuple[str, list[str], list]:
    """Send ``name``; its id, the statements the send sent and the runs it rang."""
    with no_broker() as rung, CaptureQueriesContext(connection) as queries:
        event_id = eventbus.send(name, data or {}, **options)
    return event_id, [q["sql"] for q in queries.captured_queries], list(rung)


def test_an_event_and_its_run_are_stored_in_one_round_trip_and_the_run_is_rung():
    bus.get_workspace(None)  # the default workspace is remembered (test_send_path)
    event_id, statements, rung = sending("test/loop", {"n": 2})
    assert len(statements) == 1, statements
    (statement,) = statements
    assert "pg_advisory_xact_lock_shared" in statement
    assert 'INSERT INTO "eventbus_event"' in statement
    assert 'INSERT INTO "workflows_workflowrun"' in statement
    event = Event.objects.get(pk=event_id)
    assert event.status == EventStatus.EMITTED and event.emitted_at is not None
    assert event.data == {"n": 2} and event.workspace.slug == "default"
    run = WorkflowRun.objects.get(event=event)
    assert run.workflow_id == "t-loop" and run.status == RunStatus.QUEUED
    assert run.workspace_id == event.workspace_id and run.due_at is not None
    assert rung == [str(run.pk)]
    assert engine.execute(run.pk) == RunStatus.COMPLETED


def test_every_workflow_the_event_triggers_gets_its_run_in_the_same_statement():
    @workflow(id="q-also-wild", trigger="test/wild/*")
    def also(ctx):
        return "also"

    try:
        bus.get_workspace(None)
        event_id, statements, rung = sending("test/wild/one")
    finally:
        registry.unregister("q-also-wild")
    assert len(statements) == 1
    runs = WorkflowRun.objects.filter(event_id=event_id)
    assert sorted(runs.values_list("workflow_id", flat=True)) == ["q-also-wild", "t-wild"]
    assert sorted(rung) == sorted(str(pk) for pk in runs.values_list("pk", flat=True))


def test_an_event_nobody_is_subscribed_to_is_stored_in_one_round_trip():
    bus.get_workspace(None)
    event_id, statements, rung = sending("quiet/nobody")
    assert len(statements) == 1 and rung == []
    assert Event.objects.filter(pk=event_id, status=EventStatus.EMITTED).exists()
    assert not WorkflowRun.objects.filter(event_id=event_id).exists()


def test_a_wait_for_the_event_sends_it_the_ordinary_way_and_is_resolved():
    @workflow(id="q-waiter", trigger="quiet/wait")
    def waiter(ctx):
        seen = ctx.step.wait_for_event("ping", "test/loop", timeout="1h")
        return {"seen": seen.id if seen else None}

    try:
        waiting = start("quiet/wait")
        assert engine.execute(waiting.pk) == "suspended"
        event_id, statements, rung = sending("test/loop", {"n": 1})
        # The one statement found the wait and wrote nothing; the ordinary send followed.
        assert len(statements) > 1 and "pg_advisory_xact_lock_shared" in statements[0]
        assert Event.objects.filter(name="test/loop").count() == 1
        assert WorkflowRun.objects.filter(event_id=event_id, workflow_id="t-loop").count() == 1
        waiting.refresh_from_db()
        assert waiting.steps.get(step_id="ping").status == StepStatus.COMPLETED
        assert engine.execute(waiting.pk) == RunStatus.COMPLETED
        waiting.refresh_from_db()
        assert waiting.output == {"seen": event_id}
    finally:
        registry.unregister("q-waiter")


def test_a_paused_workflow_gets_no_run_and_its_skip_is_recorded():
    pause_workflow("t-loop")
    event_id, statements, rung = sending("test/loop", {"n": 1})
    assert len(statements) > 1 and rung == []
    assert Event.objects.filter(name="test/loop").count() == 1
    assert not WorkflowRun.objects.filter(event_id=event_id).exists()
    assert EventSkip.objects.filter(event_id=event_id, workflow_id="t-loop").exists()


def test_a_pause_in_another_workspace_does_not_hold_the_event_back():
    Workspace.objects.create(slug="elsewhere")
    pause_workflow("t-loop", workspace="elsewhere")
    bus.get_workspace(None)
    event_id, statements, _ = sending("test/loop", {"n": 1})
    assert len(statements) == 1
    assert WorkflowRun.objects.filter(event_id=event_id, workflow_id="t-loop").exists()


def test_a_workflow_with_cancel_on_or_flow_control_is_started_the_ordinary_way():
    @workflow(
        id="q-cancellable",
        trigger="quiet/cancellable",
        cancel_on=[{"event": "quiet/stop", "match": "data.key"}],
    )
    def cancellable(ctx):
        ctx.step.sleep("nap", 3600)

    try:
        event_id, statements, _ = sending("quiet/cancellable", {"key": "k"})
        assert len(statements) > 1
        run = WorkflowRun.objects.get(event_id=event_id)
        assert Wait.objects.filter(run=run, event_name="quiet/stop").exists()
    finally:
        registry.unregister("q-cancellable")
    event_id, statements, _ = sending("flow/one", {"seconds": 0})  # concurrency limit
    assert len(statements) > 1
    assert WorkflowRun.objects.filter(event_id=event_id).count() == 1


def test_a_send_in_a_transaction_or_with_an_idempotency_key_goes_the_ordinary_way():
    with no_broker(), transaction.atomic(), CaptureQueriesContext(connection) as queries:
        eventbus.send("test/loop", {"n": 1})
    assert not any("held AS" in q["sql"] for q in queries.captured_queries)
    with pytest.raises(RuntimeError), no_broker(), transaction.atomic():
        eventbus.send("test/loop", {"n": 1})
        raise RuntimeError("roll back")
    assert Event.objects.filter(name="test/loop").count() == 1
    _, statements, _ = sending("test/loop", {"n": 1}, id="once")
    assert not any("held AS" in sql for sql in statements)
    _, again, _ = sending("test/loop", {"n": 1}, id="once")
    assert Event.objects.filter(name="test/loop").count() == 2  # the key's repeat: none


def test_another_subscriber_of_the_bus_still_hears_the_event():
    heard: list[str] = []
    bus.subscribe(lambda events: heard.extend(e.name for e in events))
    listener = bus._subscribers[-1]
    try:
        _, statements, rung = sending("test/loop", {"n": 1})
    finally:
        bus._subscribers.remove(listener)
    assert len(statements) > 1 and heard == ["test/loop"] and len(rung) == 1


def test_a_wait_recorded_while_the_event_is_sent_is_resolved():
    """The waiter holds the exclusive lock, its wait stored but not committed, when the
    event is sent: the send waits for the lock, then sees the wait, and resolves it."""

    @workflow(id="q-late-waiter", trigger="quiet/late-wait")
    def waiter(ctx):
        seen = ctx.step.wait_for_event("ping", "quiet/late", timeout="1h")
        return {"seen": seen.id if seen else None}

    sent: dict[str, str] = {}

    def send() -> None:
        with no_broker():
            sent["id"] = eventbus.send("quiet/late")

    try:
        bus.get_workspace(None)
        waiting = start("quiet/late-wait")
        with racing_a_wait(send, what="the send to wait for the waiter's lock"):
            assert engine.execute(waiting.pk) == "suspended"
        assert Event.objects.filter(name="quiet/late").count() == 1
        assert engine.execute(waiting.pk) == RunStatus.COMPLETED
        waiting.refresh_from_db()
        assert waiting.output == {"seen": sent["id"]}
    finally:
        registry.unregister("q-late-waiter")
