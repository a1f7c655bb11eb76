"""invoke, wait_for_event, parallel, cancellation, timeouts and failure handlers, in-process.

The same features run against real worker processes in ``test_coordination_worker.py``;
here the in-process driver makes the logic and its races quick and deterministic.
"""

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import eventbus
from eventbus.models import Event, EventStatus, Workspace
from tests.conftest import wait_until
from tests.testapp.models import LedgerEntry
from workflows import StepError, engine, lifecycle, registry, services, waits, workflow
from workflows.exceptions import StepUsageError
from workflows.models import RunStatus, StepStatus, Wait, WaitKind, WorkflowRun
from workflows.testing import drain, no_broker

pytestmark = pytest.mark.django_db


def send(name, data=None, workspace=None):
    with no_broker():
        return eventbus.send(name, data or {}, workspace=workspace)


def start(name, data=None, workspace=None):
    event_id = send(name, data, workspace)
    drain()
    return WorkflowRun.objects.get(event_id=event_id, parent__isnull=True)


def refreshed(run):
    drain()
    run.refresh_from_db()
    return run


def expire_waits(run):
    """Move the run's wait timeouts into the past, as if the time had passed."""
    past = timezone.now() - timedelta(seconds=1)
    run.steps.filter(status=StepStatus.WAITING).update(wake_at=past)
    WorkflowRun.objects.filter(pk=run.pk, status=RunStatus.WAITING).update(wake_at=past)


# --- wait_for_event ---------------------------------------------------------------------
def test_wait_for_event_returns_the_matching_event_and_ignores_others():
    run = start("coord/order.created", {"orderId": "o1"})
    assert run.status == RunStatus.WAITING and run.lease_owner is None
    wait = Wait.objects.get(run=run)
    assert (wait.kind, wait.event_name, wait.match_path) == (
        "event",
        "coord/order.paid",
        "data.orderId",
    )
    send("coord/order.paid", {"orderId": "o2"})  # another order
    Workspace.objects.create(slug="other")
    send("coord/order.paid", {"orderId": "o1"}, workspace="other")  # another workspace
    assert refreshed(run).status == RunStatus.WAITING
    paid = send("coord/order.paid", {"orderId": "o1", "amount": 5})
    run = refreshed(run)
    assert run.status == RunStatus.COMPLETED
    assert run.output == {"paid": {"orderId": "o1", "amount": 5}, "event_id": paid}
    assert not Wait.objects.exists()
    step = run.steps.get(step_id="paid")
    assert step.status == StepStatus.COMPLETED and step.output["event"]["id"] == paid


def test_wait_for_event_returns_none_at_the_timeout():
    run = start("coord/order.created", {"orderId": "o1", "timeout": "1h"})
    step = run.steps.get(step_id="paid")
    assert step.wake_at - step.started_at == timedelta(hours=1)
    expire_waits(run)
    run = refreshed(run)
    assert run.status == RunStatus.COMPLETED and run.output["paid"] is None
    send("coord/order.paid", {"orderId": "o1"})  # too late: changes nothing
    assert refreshed(run).output["paid"] is None


def test_event_emitted_before_the_wait_began_does_not_count():
    send("coord/order.paid", {"orderId": "o1"})
    run = start("coord/order.created", {"orderId": "o1"})
    assert run.status == RunStatus.WAITING


def test_wait_with_a_cel_condition():
    run = start("coord/big-order.created", {"orderId": "o9"})
    wait = Wait.objects.get(run=run)
    assert wait.match_path == "data.orderId"  # indexed through the expression's equality
    send("coord/order.paid", {"orderId": "o9", "amount": 50})
    assert refreshed(run).status == RunStatus.WAITING
    send("coord/order.paid", {"orderId": "o9", "amount": 150})
    run = refreshed(run)
    assert run.status == RunStatus.COMPLETED and run.output == {"amount": 150}


def test_an_event_resolves_every_run_waiting_for_it_once():
    runs = [start("coord/order.created", {"orderId": "same"}) for _ in range(3)]
    send("coord/order.paid", {"orderId": "same"})
    send("coord/order.paid", {"orderId": "same"})  # a second payment: nobody is left waiting
    for run in runs:
        run = refreshed(run)
        assert run.status == RunStatus.COMPLETED
    assert LedgerEntry.objects.filter(step="after").count() == 3


def test_matching_uses_the_index_and_does_not_scale_with_waiting_runs():
    run = start("coord/order.created", {"orderId": "needle"})
    template = Wait.objects.get(run=run)
    others = [
        Wait(
            run=run,
            kind=WaitKind.EVENT,
            workspace_id=template.workspace_id,
            event_name=template.event_name,
            match_path=template.match_path,
            match_hash=f"{i:040x}",
            match="data.orderId",
            expires_at=template.expires_at,
        )
        for i in range(10_000)
    ]
    Wait.objects.bulk_create(others, batch_size=2000)
    with CaptureQueriesContext(connection) as queries:
        send("coord/order.paid", {"orderId": "needle"})
    wait_queries = [
        q["sql"]
        for q in queries
        if q["sql"].startswith("SELECT") and '"workflows_wait"' in q["sql"]
    ]
    # An existence check, one lookup by hash, and the check that the run has no other
    # wait left: no query reads the 10,000 other waits.
    assert len(wait_queries) <= 3, wait_queries
    lookup = [sql for sql in wait_queries if "match_hash" in sql and "IN" in sql]
    assert lookup, wait_queries
    assert refreshed(run).steps.get(step_id="paid").status == StepStatus.COMPLETED
    assert Wait.objects.count() == 10_000  # the others are untouched


def flag_first_write(flag: threading.Event):
    """An execute wrapper that sets ``flag`` as its connection starts writing."""

    def wrapper(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith(("BEGIN", "INSERT", "UPDATE")):
            flag.set()
        return execute(sql, params, many, context)

    return wrapper


def advisory_locks(*, granted: bool) -> int:
    """Advisory locks of other connections, held (``granted``) or waited for."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted = %s AND pid <> pg_backend_pid()",
            [granted],
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_event_committed_while_the_wait_is_being_recorded_is_not_lost(monkeypatch):
    """The sender commits between "the step began" and "the wait is stored"."""
    event_id = send("coord/order.created", {"orderId": "race"})
    sent = threading.Event()
    original = waits.lock_for_wait

    def emit_meanwhile(workspace_id, name):
        writing = threading.Event()

        def sender():
            try:
                with connection.execute_wrapper(flag_first_write(writing)):
                    eventbus.send("coord/order.paid", {"orderId": "race"})
            finally:
                connection.close()
                sent.set()

        with no_broker():
            thread = threading.Thread(target=sender)
            thread.start()
            if connection.vendor == "sqlite":
                # One writer at a time: our transaction holds the write lock, so the
                # sender can only be at its first write, waiting for our commit.
                assert writing.wait(30), "the sender never reached its first write"
            else:  # PostgreSQL: the sender is ahead of us on the lock (or done)
                wait_until(
                    lambda: sent.is_set() or advisory_locks(granted=True),
                    timeout=30,
                    interval=0.005,
                    what="the sender to take its lock",
                )
        original(workspace_id, name)

    monkeypatch.setattr(waits, "lock_for_wait", emit_meanwhile)
    drain()
    sent.wait(10)
    run = WorkflowRun.objects.get(event_id=event_id)
    run = refreshed(run)
    assert run.status == RunStatus.COMPLETED and run.output["paid"] == {"orderId": "race"}


@pytest.mark.django_db(transaction=True)
def test_event_sent_while_the_wait_transaction_is_open_is_not_lost(monkeypatch):
    """The sender starts after the wait is stored but before it commits."""
    event_id = send("coord/order.created", {"orderId": "race2"})
    threads = []
    original = waits.record_event_wait

    def send_before_commit(*args, **kwargs):
        result = original(*args, **kwargs)

        writing = threading.Event()

        def sender():
            try:
                with connection.execute_wrapper(flag_first_write(writing)), no_broker():
                    eventbus.send("coord/order.paid", {"orderId": "race2"})
            finally:
                connection.close()

        thread = threading.Thread(target=sender)
        thread.start()
        threads.append(thread)
        # The sender blocks until our transaction commits: on PostgreSQL on our lock,
        # seen waiting in pg_locks; on SQLite on the write lock, at its first write.
        if connection.vendor == "postgresql":
            wait_until(
                lambda: advisory_locks(granted=False),
                timeout=30,
                interval=0.005,
                what="the sender to wait for our lock",
            )
        else:
            assert writing.wait(30), "the sender never reached its first write"
        return result

    monkeypatch.setattr(waits, "record_event_wait", send_before_commit)
    drain()
    for thread in threads:
        thread.join(30)
    run = refreshed(WorkflowRun.objects.get(event_id=event_id))
    assert run.status == RunStatus.COMPLETED and run.output["paid"] == {"orderId": "race2"}


# --- invoke -------------------------------------------------------------------------------
def test_invoke_returns_the_childs_value_and_links_the_runs():
    run = refreshed(start("coord/parent", {"value": 4}))
    assert run.status == RunStatus.COMPLETED and run.output == {"result": {"doubled": 8}}
    (kid,) = run.children.all()
    assert kid.workflow_id == "c-child" and kid.status == RunStatus.COMPLETED
    assert kid.event.name == lifecycle.INVOKED and kid.event.data == {"value": 4}
    assert kid.workspace_id == run.workspace_id
    step = run.steps.get(step_id="call")
    assert step.kind == "invoke" and step.output == {
        "run_id": str(kid.pk),
        "output": {"doubled": 8},
    }


def test_a_failed_child_raises_step_error_in_the_parent():
    run = refreshed(start("coord/parent", {"child": {"fail": True}}))
    assert run.status == RunStatus.COMPLETED
    assert run.output["error"] == "ChildRunFailed"
    assert "cannot double 21" in run.output["message"]


def test_invoking_an_unknown_workflow_raises_step_error():
    run = refreshed(start("coord/parent", {"target": "no-such-workflow"}))
    assert run.output["error"] == "UnknownWorkflowError"
    assert "no-such-workflow" in run.output["message"]
    assert not run.children.exists()


def test_invoke_timeout_raises_step_error_and_the_child_runs_on():
    run = start("coord/parent", {"timeout": 60, "child": {"sleep": 3600}})
    assert run.status == RunStatus.WAITING
    expire_waits(run)
    run = refreshed(run)
    assert run.output["error"] == "InvokeTimeout"
    assert run.children.get().status == RunStatus.SLEEPING


def test_a_replayed_parent_does_not_start_a_second_child():
    run = refreshed(start("coord/parent", {"value": 1}))
    replay = services.replay_run(run.pk, from_step="after")
    drain()
    replay.refresh_from_db()
    assert replay.status == RunStatus.COMPLETED and replay.output == run.output
    assert WorkflowRun.objects.filter(workflow_id="c-child").count() == 1
    # A duplicate execution of the finished parent changes nothing either.
    assert engine.execute(run.pk) == "skipped"


def test_cancelling_the_child_tells_the_waiting_parent():
    run = start("coord/parent", {"child": {"sleep": 3600}})
    kid = run.children.get()
    assert services.cancel_run(kid.pk)
    run = refreshed(run)
    assert run.output["error"] == "ChildRunCancelled"


def test_cancelling_the_parent_cancels_its_children():
    import workflows

    run = start("coord/parent", {"child": {"sleep": 3600}})
    assert workflows.cancel_run(str(run.pk))
    assert not workflows.cancel_run(run.pk)  # already ended
    assert run.children.get().status == RunStatus.CANCELLED
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and not Wait.objects.exists()


# --- parallel -----------------------------------------------------------------------------
def test_parallel_branches_run_as_their_own_runs_and_return_in_order():
    run = refreshed(start("coord/parallel", {"n": 4}))
    assert run.status == RunStatus.COMPLETED, run.error
    assert [r["index"] for r in run.output["results"]] == [0, 1, 2, 3]
    branches = WorkflowRun.objects.filter(parent=run).order_by("branch_index")
    assert [b.branch_index for b in branches] == [0, 1, 2, 3]
    for branch in branches:
        (memo,) = branch.steps.all()
        assert memo.step_id == f"fan[{branch.branch_index}]" and memo.kind == "run"
    assert LedgerEntry.objects.filter(step="before").count() == 1  # not re-run by branches
    assert LedgerEntry.objects.filter(step__startswith="branch-").count() == 4
    group = run.steps.get(step_id="fan")
    assert group.kind == "parallel" and group.status == StepStatus.COMPLETED
    # Branch runs do not emit system events; the parent does.
    finished = Event.objects.filter(name=lifecycle.RUN_FINISHED)
    assert [e.data["run_id"] for e in finished] == [str(run.pk)]


def test_a_failing_branch_raises_step_error_once_all_branches_ended():
    run = start("coord/parallel", {"n": 3, "fail": 1})
    drain(skip_time=True)  # through the failing branch's retry backoff
    run.refresh_from_db()
    assert "branch 1 failed" in run.output["error"]
    statuses = dict(WorkflowRun.objects.filter(parent=run).values_list("branch_index", "status"))
    assert statuses == {0: "completed", 1: "failed", 2: "completed"}
    # The failing branch was retried (retries=1) with its own memo.
    assert LedgerEntry.objects.filter(step="branch-1").count() == 2


# --- cancellation, timeouts -----------------------------------------------------------------
def test_cancel_on_event_cancels_a_sleeping_run_and_its_deferred_events():
    run = start("coord/subscription.started", {"userId": "u1"})
    assert run.status == RunStatus.SLEEPING
    reminder = Event.objects.get(name="coord/reminder")
    assert reminder.status == EventStatus.SCHEDULED
    send("coord/subscription.ended", {"userId": "someone-else"})
    assert refreshed(run).status == RunStatus.SLEEPING
    send("coord/subscription.ended", {"userId": "u1"})
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and "coord/subscription.ended" in run.error["message"]
    reminder.refresh_from_db()
    assert reminder.status == EventStatus.CANCELLED
    drain(skip_time=True)
    assert not LedgerEntry.objects.filter(step="second").exists()
    assert Event.objects.get(pk=reminder.pk).emitted_at is None


def test_finish_timeout_cancels_a_run_that_takes_too_long():
    run = start("coord/slow")
    assert run.status == RunStatus.SLEEPING
    assert run.timeout_at == run.started_at + timedelta(seconds=2)
    WorkflowRun.objects.filter(pk=run.pk).update(timeout_at=timezone.now())
    run = refreshed(run)
    assert run.status == RunStatus.CANCELLED and "did not finish within" in run.error["message"]


def test_start_timeout_cancels_a_run_that_waited_too_long_to_start():
    @workflow(id="c-start-timeout", trigger="coord/start-timeout", timeouts={"start": "1m"})
    def late(ctx):
        return 1

    try:
        event_id = send("coord/start-timeout")
        run = WorkflowRun.objects.get(event_id=event_id)
        assert run.timeout_at is not None
        WorkflowRun.objects.filter(pk=run.pk).update(timeout_at=timezone.now())
        run = refreshed(run)
        assert run.status == RunStatus.CANCELLED and "did not start" in run.error["message"]
    finally:
        registry.unregister("c-start-timeout")


# --- failure handlers, system events --------------------------------------------------------
def test_on_failure_runs_a_durable_handler_with_the_failed_run():
    run = refreshed(start("coord/doomed", {"x": 1}))
    assert run.status == RunStatus.FAILED
    handler = WorkflowRun.objects.get(workflow_id="c-doomed:on-failure")
    assert handler.status == RunStatus.COMPLETED
    assert handler.output["failed_run"] == str(run.pk)
    assert "cannot double 1" in handler.output["error"]
    assert handler.event.name == lifecycle.RUN_FAILED
    assert handler.event.data["event"]["data"] == {"x": 1}
    assert handler.steps.get().step_id == "note"


def test_system_events_are_emitted_in_the_runs_workspace_and_trigger_workflows():
    seen = []

    @workflow(id="c-listener", trigger=["workflows/run.failed", "workflows/run.cancelled"])
    def listener(ctx):
        seen.append((ctx.event.name, ctx.event.data["workflow_id"]))

    try:
        Workspace.objects.create(slug="team")
        failed = refreshed(start("coord/doomed", workspace="team"))
        sleeping = start("coord/slow", workspace="team")
        services.cancel_run(sleeping.pk)
        drain()
    finally:
        registry.unregister("c-listener")
    assert ("workflows/run.failed", "c-doomed") in seen
    assert ("workflows/run.cancelled", "c-slow") in seen
    names = Event.objects.filter(workspace__slug="team", name__startswith="workflows/run.")
    assert {(e.name, e.data["run_id"]) for e in names} >= {
        ("workflows/run.finished", str(failed.pk)),
        ("workflows/run.failed", str(failed.pk)),
        ("workflows/run.cancelled", str(sleeping.pk)),
    }
    # Runs triggered by system events do not emit any of their own.
    listeners = WorkflowRun.objects.filter(workflow_id="c-listener")
    assert not Event.objects.filter(data__run_id__in=[str(r.pk) for r in listeners]).exists()


# --- bad input: in tests/test_catalogue.py (COORDINATION_CASES) ---------------------------
def test_step_usage_errors_are_value_errors_users_can_catch():
    assert issubclass(StepUsageError, ValueError)
    assert issubclass(StepError, Exception)


def test_wait_rows_and_transactions_roll_back_together():
    """A failure inside the wait's transaction leaves no wait and no memo behind."""
    run = start("coord/order.created", {"orderId": "tx"})
    assert Wait.objects.filter(run=run).count() == 1
    with pytest.raises(RuntimeError, match="roll back"), transaction.atomic():
        services.cancel_run(run.pk)
        raise RuntimeError("roll back")
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING and Wait.objects.filter(run=run).count() == 1


# --- the console shows it ---------------------------------------------------------------
def test_show_run_and_the_admin_say_what_a_run_waits_for(admin_client):
    from io import StringIO

    from django.core.management import call_command

    waiting = start("coord/order.created", {"orderId": "o-42"})
    parent = start("coord/parent", {"child": {"sleep": 3600}})
    fan = WorkflowRun.objects.get(event_id=send("coord/parallel", {"n": 2}))
    with no_broker():
        engine.execute(fan.pk)  # the parent only: it starts its branches and waits
    out = StringIO()
    call_command("show_run", str(waiting.pk), stdout=out)
    text = out.getvalue()
    assert "Waits     step 'paid' waits for event 'coord/order.paid' where data.orderId" in text
    assert '"o-42"' in text and "until 20" in text
    out = StringIO()
    call_command("show_run", str(parent.pk), stdout=out)
    kid = parent.children.get()
    assert f"waits for child run {kid.pk} (c-child, sleeping)" in out.getvalue()
    assert f"Child     {kid.pk} c-child (sleeping)" in out.getvalue()
    out = StringIO()
    call_command("show_run", str(fan.pk), stdout=out)
    assert "waits for 2 of 2 parallel branches" in out.getvalue()
    page = admin_client.get(f"/admin/workflows/workflowrun/{waiting.pk}/change/")
    assert page.status_code == 200
    assert (
        "waits for event &#x27;coord/order.paid&#x27; where data.orderId" in page.content.decode()
    )
    page = admin_client.get(f"/admin/workflows/workflowrun/{parent.pk}/change/").content.decode()
    assert f"/admin/workflows/workflowrun/{kid.pk}/change/" in page  # links to its child


def test_a_replay_gets_the_timeouts_and_cancel_on_of_a_new_run():
    run = start("coord/subscription.started", {"userId": "u5"})
    replay = services.replay_run(run.pk)
    assert Wait.objects.filter(run=replay, kind=WaitKind.CANCEL).count() == 1
    send("coord/subscription.ended", {"userId": "u5"})
    replay.refresh_from_db()
    run.refresh_from_db()
    assert replay.status == RunStatus.CANCELLED and run.status == RunStatus.CANCELLED
