"""PostgreSQL: a run that completes with nobody listening for its ``run.finished`` ends,
event included, in one round trip (``runstore_pg.finish_with_event``).

Every run ends by storing its ``run.finished`` event. When no workflow is triggered by
it, no ``cancel_on`` or parent hangs on the run and the event bus has only the engine's
subscribers, the end needs the run's row, the event's row and one question: is a wait
for ``run.finished`` recorded in the workspace? One message of two statements answers
it under the emitters' lock and writes both rows only if none is, in one transaction;
if one is, nothing is written and the run ends the ordinary way, which resolves it.
"""

import threading
import uuid

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import eventbus
from eventbus import bus
from eventbus.models import Event, EventStatus
from tests.conftest import _advisory_waiters, racing_a_wait, wait_until
from tests.conftest import start_run as start
from workflows import engine, lifecycle, registry, runstore, runstore_pg, waits, workflow
from workflows.execution import Execution
from workflows.models import RunStatus, StepResult, StepStatus, WorkflowRun
from workflows.testing import no_broker

pytestmark = [
    pytest.mark.django_db(transaction=True),  # as a worker: no test transaction around it
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the PostgreSQL fast path"),
]


def finished_events(run: WorkflowRun) -> list[Event]:
    return list(Event.objects.filter(name=lifecycle.RUN_FINISHED, data__run_id=str(run.pk)))


def ending(run: WorkflowRun) -> tuple[str, list[str]]:
    """Execute ``run``; its outcome and the statements its end sent (``Execution.complete``:
    the last step's memo, held back, and the run's end)."""
    captured: list[str] = []
    original = Execution.complete

    def complete(*args, **kwargs):
        with CaptureQueriesContext(connection) as queries:
            try:
                return original(*args, **kwargs)
            finally:
                captured.extend(q["sql"] for q in queries.captured_queries)

    Execution.complete = complete
    try:
        return engine.execute(run.pk), captured
    finally:
        Execution.complete = original


def test_a_completed_run_nobody_listens_for_ends_with_its_event_in_one_round_trip():
    run = start("test/loop", {"n": 2})
    outcome, statements = ending(run)
    assert outcome == RunStatus.COMPLETED
    assert len(statements) == 1, statements
    assert "pg_advisory_xact_lock_shared" in statements[0]
    assert 'INSERT INTO "eventbus_event"' in statements[0]
    assert 'INSERT INTO "workflows_stepresult"' in statements[0]  # the last step's memo
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED and run.output == {"total": 1}
    assert list(run.steps.order_by("position").values_list("step_id", "status")) == [
        ("add", StepStatus.COMPLETED),
        ("add", StepStatus.COMPLETED),
    ]
    assert run.lease_owner is None and run.finished_at is not None
    (event,) = finished_events(run)
    assert event.status == EventStatus.EMITTED and event.emitted_at is not None
    assert event.workspace_id == run.workspace_id
    assert event.data["status"] == "completed" and event.data["output"] == {"total": 1}
    assert event.data["event"]["name"] == "test/loop"


def test_a_wait_for_run_finished_sends_the_end_the_ordinary_way_and_is_resolved():
    @workflow(id="q-watcher", trigger="quiet/watch")
    def watcher(ctx):
        seen = ctx.step.wait_for_event(
            "done", lifecycle.RUN_FINISHED, timeout="1h", if_="async.data.workflow_id == 't-loop'"
        )
        return {"seen": seen.data["run_id"] if seen else None}

    try:
        waiting = start("quiet/watch")
        assert engine.execute(waiting.pk) == "suspended"
        run = start("test/loop", {"n": 1})
        outcome, statements = ending(run)
        assert outcome == RunStatus.COMPLETED
        # The one statement found the wait and wrote nothing; the ordinary end followed.
        assert len(statements) > 1 and "pg_advisory_xact_lock_shared" in statements[0]
        assert len(finished_events(run)) == 1
        assert run.steps.filter(status=StepStatus.COMPLETED).count() == 1  # memo stored too
        waiting.refresh_from_db()
        assert waiting.steps.get(step_id="done").status == StepStatus.COMPLETED
        assert engine.execute(waiting.pk) == RunStatus.COMPLETED
        waiting.refresh_from_db()
        assert waiting.output == {"seen": str(run.pk)}
    finally:
        registry.unregister("q-watcher")


def test_a_workflow_triggered_by_run_finished_still_starts():
    @workflow(id="q-follower", trigger=lifecycle.RUN_FINISHED)
    def follower(ctx):
        return {"after": ctx.event.data["run_id"]}

    try:
        run = start("test/loop", {"n": 1})
        outcome, statements = ending(run)
        assert outcome == RunStatus.COMPLETED and len(statements) > 1
        (event,) = finished_events(run)
        assert WorkflowRun.objects.filter(workflow_id="q-follower", event=event).count() == 1
    finally:
        registry.unregister("q-follower")


def test_another_subscriber_of_the_bus_still_hears_the_event():
    heard: list[str] = []

    def listener(events):
        heard.extend(str(e.data.get("run_id")) for e in events if e.name == lifecycle.RUN_FINISHED)

    bus.subscribe(listener)
    try:
        run = start("test/loop", {"n": 1})
        outcome, statements = ending(run)
    finally:
        bus._subscribers.remove(listener)
    assert outcome == RunStatus.COMPLETED and len(statements) > 1
    assert heard == [str(run.pk)]


def test_a_run_that_is_no_longer_ours_is_not_ended_and_stores_no_event():
    run = start("test/loop", {"n": 1})
    row = bus.immediate_row(
        lifecycle._spec(lifecycle.RUN_FINISHED, {"run_id": str(run.pk)}), run.workspace
    )
    key = waits.emitter_lock_key(run.workspace_id, lifecycle.RUN_FINISHED)
    assert runstore_pg.finish_with_event(run.pk, "not-the-owner", 1, timezone.now(), row, key) == (
        False,
        None,
    )
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and not finished_events(run)


def test_the_quiet_end_commits_without_waiting_for_the_disk():
    run = start("test/loop", {"n": 1})
    WorkflowRun.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, lease_owner="me")
    row = bus.immediate_row(
        lifecycle._spec(lifecycle.RUN_FINISHED, {"run_id": str(run.pk)}), run.workspace
    )
    key = waits.emitter_lock_key(run.workspace_id, lifecycle.RUN_FINISHED)
    # Inside a transaction of our own, to look at the setting the statement left.
    with transaction.atomic(), connection.cursor() as cursor:
        assert runstore_pg.finish_with_event(run.pk, "me", 1, timezone.now(), row, key) == (
            True,
            None,
        )
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone() == ("off",)
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone() == ("on",)
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED and len(finished_events(run)) == 1


def test_a_wait_recorded_while_the_run_ends_is_resolved():
    """The waiter holds the exclusive lock, its wait stored but not committed, when the
    run ends: the end waits for the lock, then sees the wait, and resolves it."""

    @workflow(id="q-late-watcher", trigger="quiet/late-watch")
    def watcher(ctx):
        seen = ctx.step.wait_for_event("done", lifecycle.RUN_FINISHED, timeout="1h")
        return {"seen": seen.data["run_id"] if seen else None}

    results: dict[str, str] = {}
    run = start("test/loop", {"n": 1})

    def end() -> None:
        results["outcome"] = engine.execute(run.pk)

    try:
        waiting = start("quiet/late-watch")
        with racing_a_wait(end, what="the run's end to wait for the waiter's lock"):
            assert engine.execute(waiting.pk) == "suspended"
        assert results == {"outcome": RunStatus.COMPLETED}
        assert engine.execute(waiting.pk) == RunStatus.COMPLETED
        waiting.refresh_from_db()
        assert waiting.output == {"seen": str(run.pk)}
    finally:
        registry.unregister("q-late-watcher")


def test_a_run_holding_a_concurrency_slot_hands_it_on_in_the_same_round_trip():
    first = start("flow/one", {"seconds": 0})
    second = start("flow/one", {"seconds": 0})
    with no_broker() as rung:
        outcome, statements = ending(first)
    assert outcome == RunStatus.COMPLETED
    assert len(statements) == 1, statements
    assert "pg_advisory_xact_lock(" in statements[0]  # the group's, before the snapshot
    assert len(finished_events(first)) == 1
    second.refresh_from_db()
    assert second.status == RunStatus.QUEUED and second.held_by == ""  # handed the slot
    assert second.due_at is not None  # a ring timeout ahead, should the bell be lost
    assert rung == [str(second.pk)]
    # Claimed here, the hand-over's row tells the claim what to ask: one statement.
    token = uuid.uuid4().hex
    with CaptureQueriesContext(connection) as claim:
        assert runstore.claim(second.pk, token) is not None
    assert len(claim) == 1, [q["sql"] for q in claim.captured_queries]
    assert lifecycle.finish(WorkflowRun.objects.get(pk=second.pk), token, RunStatus.COMPLETED)


def test_a_run_holding_slots_of_two_lines_ends_the_ordinary_way_and_hands_both_on():
    """``f-keyed``: three at once in all, one per account. The end hands on the slot of
    each line it held, in its transaction."""
    first = start("flow/keyed", {"account": "a"})
    same_account = start("flow/keyed", {"account": "a"})
    assert same_account.held_by == "concurrency wf:f-keyed:a"
    outcome, statements = ending(first)
    assert outcome == RunStatus.COMPLETED and len(statements) > 1
    assert len(finished_events(first)) == 1
    same_account.refresh_from_db()
    assert same_account.status == RunStatus.QUEUED and same_account.held_by == ""


def test_a_run_lined_up_while_the_slot_holder_ends_is_handed_the_slot():
    """The new run is stored held, under its group's lock, when the holder ends: the end
    waits for that lock, then sees the run in line, and hands it the slot."""
    first = start("flow/one", {"seconds": 0})
    token = uuid.uuid4().hex
    claimed = runstore.claim(first.pk, token)
    assert claimed is not None
    results: dict[str, bool] = {}

    def end() -> None:
        results["ended"] = lifecycle.finish(claimed, token, RunStatus.COMPLETED)

    thread = threading.Thread(target=lambda: (end(), connection.close()))
    with no_broker():
        with transaction.atomic():
            event_id = eventbus.send("flow/one", {"seconds": 0})
            second = WorkflowRun.objects.get(event_id=event_id)
            assert second.held_by == "concurrency wf:f-one"  # the group is full
            thread.start()
            wait_until(
                lambda: _advisory_waiters() > 0,
                timeout=30,
                interval=0.005,
                what="the end to wait for the group's lock",
            )
        thread.join(30)
    assert results == {"ended": True}
    second.refresh_from_db()
    assert second.status == RunStatus.QUEUED and second.held_by == ""


def test_a_held_memo_is_stored_before_the_next_step_begins():
    seen: list[int] = []

    @workflow(id="q-two", trigger="quiet/two")
    def two(ctx):
        ctx.step.run("first", lambda: 1)
        # Only the workflow's own code has run since: the memo is still held back.
        seen.append(StepResult.objects.filter(run_id=ctx.run_id).count())
        ctx.step.run(
            "second",
            lambda: seen.append(
                StepResult.objects.filter(run_id=ctx.run_id, step_id="first").count()
            ),
        )
        return "done"

    try:
        run = start("quiet/two")
        assert engine.execute(run.pk) == RunStatus.COMPLETED
    finally:
        registry.unregister("q-two")
    assert seen == [0, 1]
    assert run.steps.count() == 2


def test_a_run_that_fails_after_its_last_step_keeps_that_steps_memo():
    @workflow(id="q-fails-after", trigger="quiet/fails-after", retries=0)
    def fails_after(ctx):
        ctx.step.run("ran", lambda: "ok")
        raise ValueError("after the step")

    try:
        run = start("quiet/fails-after")
        assert engine.execute(run.pk) == RunStatus.FAILED
    finally:
        registry.unregister("q-fails-after")
    run.refresh_from_db()
    assert run.error["message"] == "after the step"
    assert run.steps.get().status == StepStatus.COMPLETED


def test_a_run_cancelled_after_its_last_step_keeps_that_steps_memo():
    @workflow(id="q-cancelled-after", trigger="quiet/cancelled-after")
    def cancelled_after(ctx):
        ctx.step.run("ran", lambda: "ok")
        lifecycle.cancel(ctx.run_id, reason="cancelled before its end")  # as from the admin
        return "never stored"

    try:
        run = start("quiet/cancelled-after")
        assert engine.execute(run.pk) == "cancelled"
    finally:
        registry.unregister("q-cancelled-after")
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.output is None
    assert run.steps.get().status == StepStatus.COMPLETED
    assert len(finished_events(run)) == 1
