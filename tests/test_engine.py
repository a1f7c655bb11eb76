"""The engine with the in-process driver: memo keys, replays, retries, failures, misuse."""

import hashlib
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from eventbus.models import Event, Workspace
from tests.conftest import finish_run as finish
from tests.conftest import start_run as start
from tests.testapp import workflows as test_workflows
from tests.testapp.models import LedgerEntry
from workflows import engine, memo
from workflows.models import RunStatus, StepResult, StepStatus, WorkflowRun
from workflows.testing import drain, no_broker

pytestmark = pytest.mark.django_db


def test_memo_keys_follow_the_contract():
    assert memo.key_for("fetch") == hashlib.sha1(b"fetch").hexdigest()
    assert memo.key_for("fetch", 2) == hashlib.sha1(b"fetch:2").hexdigest()
    counter = memo.Counter()
    assert [counter.next("a")[0] for _ in range(3)] == [
        memo.key_for("a"), memo.key_for("a", 1), memo.key_for("a", 2)
    ]  # fmt: skip


def test_steps_run_once_and_a_loop_keeps_one_memo_per_repeat():
    run = finish(start("test/loop", {"n": 4}))
    assert run.status == RunStatus.COMPLETED and run.output == {"total": 6}
    keys = list(run.steps.order_by("position").values_list("key", flat=True))
    assert keys == [memo.key_for("add", n) for n in range(4)]


def test_resumed_run_skips_completed_steps():
    run = start("test/steps", {"steps": 4, "sleep": 60})
    drain()  # runs up to the sleep
    run.refresh_from_db()
    assert run.status == RunStatus.SLEEPING
    assert LedgerEntry.objects.count() == 3  # s0, s1, s2 (sleep after index 2)
    finish(run)
    assert run.status == RunStatus.COMPLETED
    assert sorted(LedgerEntry.objects.values_list("step", flat=True)) == ["s0", "s1", "s2", "s3"]
    assert run.steps.get(step_id="nap").status == StepStatus.COMPLETED


def server_transactions() -> int:
    """Transactions the server has ended in this database (PostgreSQL's own count)."""
    with connection.cursor() as cursor:
        # This backend's counts reach the shared statistics when it next goes idle.
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
        return cursor.fetchone()[0]


def cost_of_a_run(steps: int) -> dict:
    """Execute a fresh run of ``steps`` new steps; count its queries and transactions."""
    run = start("test/loop", {"n": steps})  # steps with no database work of their own
    before = server_transactions() if connection.vendor == "postgresql" else 0
    with CaptureQueriesContext(connection) as queries:
        engine.execute(run.pk)
    after = server_transactions() if connection.vendor == "postgresql" else 0
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED and run.steps.count() == steps
    statements = [q["sql"] for q in queries]
    return {
        "memo selects": sum(
            1
            for sql in statements
            if sql.startswith("SELECT") and 'FROM "workflows_stepresult"' in sql
        ),
        "commits": statements.count("COMMIT"),
        "statements": sum(1 for sql in statements if not sql.startswith(("BEGIN", "COMMIT"))),
        "savepoints": sum(1 for sql in statements if sql.startswith("SAVEPOINT")),
        # Minus the two statements of the second measurement (each its own transaction).
        "server transactions": after - before - 2,
    }


@pytest.mark.django_db(transaction=True)
def test_memos_load_in_one_query_and_each_new_step_costs_one_transaction():
    # A transactional database, as a worker has: no test transaction around the run, so
    # PostgreSQL takes its single-statement fast paths (claim, fenced memo insert) and
    # each transaction the engine opens really commits.
    # The first memo stored alone on a connection prepares its statement (PostgreSQL):
    # one more server transaction, once (a run's last memo is stored with its end).
    cost_of_a_run(2)
    small, large = cost_of_a_run(10), cost_of_a_run(20)
    for cost in (small, large):
        # A fresh run: PostgreSQL's claim says it never started, so it has no memo to
        # read; elsewhere all memos come in one query.
        assert cost["memo selects"] == (0 if connection.vendor == "postgresql" else 1), cost
        assert cost["savepoints"] == 0, cost  # no transaction around us to nest in
    if connection.vendor == "postgresql":
        # Counted by the server: the claim, one per new step but the last, and the end of
        # the run, which stores the last step's memo too; ten more steps cost exactly ten
        # more, each one fenced statement.
        assert large["server transactions"] - small["server transactions"] == 10, (small, large)
        assert small["server transactions"] == 1 + 9 + 1, small
        assert large["statements"] - small["statements"] == 10, (small, large)
    else:
        # SQLite: each step's fence (UPDATE) and memo (INSERT) in one explicit transaction.
        assert large["commits"] - small["commits"] == 10, (small, large)
        assert small["commits"] <= 10 + 2, small
        assert large["statements"] - small["statements"] == 20, (small, large)


def test_failing_step_is_retried_then_succeeds():
    run = finish(start("test/flaky", {"fail_times": 2}))
    assert run.status == RunStatus.COMPLETED and run.output == {"attempt": 2}
    step = run.steps.get()
    assert step.status == StepStatus.COMPLETED and step.attempt == 2
    assert list(LedgerEntry.objects.order_by("id").values_list("attempt", flat=True)) == [0, 1, 2]


def test_step_failing_for_good_fails_the_run_with_a_readable_error():
    run = finish(start("test/fails"))
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "StepError"
    assert "step 'boom' failed after 2 tries: ValueError: always broken" in run.error["message"]
    assert "Traceback" in run.error["traceback"]
    assert LedgerEntry.objects.count() == 2  # first try + 1 retry


def test_workflow_may_catch_step_error():
    run = finish(start("test/fails", {"catch": True}))
    assert run.status == RunStatus.COMPLETED
    assert "always broken" in run.output["caught"]
    assert run.steps.get(step_id="boom").status == StepStatus.FAILED


def test_non_retriable_error_is_not_retried():
    run = finish(start("test/fails", {"kind": "nonretriable"}))
    assert run.status == RunStatus.FAILED and "card declined" in run.error["message"]
    assert LedgerEntry.objects.count() == 1


def test_retry_after_error_delays_the_retry():
    run = start("test/fails", {"kind": "retry_after"})
    drain(skip_time=False)
    step = StepResult.objects.get(run=run)
    run.refresh_from_db()
    assert step.status == StepStatus.RETRYING and run.status == RunStatus.QUEUED
    assert (step.wake_at - step.updated_at).total_seconds() == pytest.approx(0.3, abs=0.1)


def test_replaying_a_failed_step_raises_step_error_again_without_running_it():
    run = finish(start("test/fails", {"catch": True}))
    WorkflowRun.objects.filter(pk=run.pk).update(status=RunStatus.QUEUED, output=None)
    StepResult.objects.filter(run=run, step_id="cleanup").delete()
    finish(run)
    assert run.status == RunStatus.COMPLETED
    assert LedgerEntry.objects.filter(step="boom").count() == 2  # not run again


def test_changed_code_raises_non_determinism_error():
    run = start("test/shape")
    engine.execute(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED
    WorkflowRun.objects.filter(pk=run.pk).update(status=RunStatus.QUEUED)
    test_workflows.SHAPE["sleep_first"] = True
    try:
        finish(run)
    finally:
        test_workflows.SHAPE["sleep_first"] = False
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "NonDeterminismError"
    assert "recorded as a 'run' step" in run.error["message"]


def test_send_event_emits_into_the_runs_workspace_and_not_twice_on_replay():
    Workspace.objects.create(slug="acme")
    run = start("test/fanout", {"n": 3}, workspace="acme")
    drain()
    children = Event.objects.filter(source_run_id=run.pk)
    assert children.count() == 3
    assert set(children.values_list("workspace__slug", flat=True)) == {"acme"}
    step_ids = dict(StepResult.objects.filter(run=run).values_list("pk", "step_id"))
    assert all(step_ids.get(e.source_step_id) == "child" for e in children)
    # Replay the parent from the start of its memo table: nothing is emitted again.
    WorkflowRun.objects.filter(pk=run.pk).update(status=RunStatus.QUEUED)
    drain()
    assert Event.objects.filter(source_run_id=run.pk).count() == 3
    assert WorkflowRun.objects.filter(workflow_id="t-child").count() == 3


def test_deferred_send_event_is_scheduled_then_emitted():
    from eventbus import bus

    run = start("test/fanout", {"n": 0, "deferred": 2, "ts": bus.now_ms() + 3_600_000})
    drain(skip_time=False)
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED  # the parent never waits
    assert Event.objects.filter(status="scheduled").count() == 2
    drain(skip_time=True)
    assert WorkflowRun.objects.filter(workflow_id="t-child", status="completed").count() == 2


def test_duplicate_execution_of_a_finished_run_is_a_no_op():
    run = finish(start("test/steps", {"steps": 2}))
    assert engine.execute(run.pk) == "skipped"
    assert LedgerEntry.objects.count() == 2


def test_run_held_by_a_live_lease_is_not_claimed_twice():
    from workflows import runstore

    run = start("test/steps", {"steps": 1})
    assert runstore.claim(run.pk, "worker-a") is not None
    assert engine.execute(run.pk) == "skipped"


def test_a_zombie_worker_cannot_write_after_losing_its_lease():
    from workflows import runstore
    from workflows.exceptions import LeaseLost

    run = start("test/steps", {"steps": 1})
    assert runstore.claim(run.pk, "zombie") is not None
    WorkflowRun.objects.filter(pk=run.pk).update(lease_owner="someone-else")
    memo_row = StepResult(run=run, step_id="x", key="k", position=0, kind="run", status="completed")
    with pytest.raises(LeaseLost):
        runstore.save_step(run.pk, "zombie", memo_row)
    assert not StepResult.objects.filter(run=run).exists()


def test_sleep_until_and_bad_sleep_arguments():
    from eventbus import bus

    run = finish(start("test/sleepy", {"until_ms": bus.now_ms() - 1000}), skip_time=False)
    assert run.status == RunStatus.COMPLETED
    bad = finish(start("test/sleepy", {"seconds": -5}))
    assert bad.status == RunStatus.FAILED and "zero or more" in bad.error["message"]


def test_sleep_takes_the_same_durations_as_every_other_option():
    text = start("test/sleepy", {"seconds": "3d"})
    drain()
    text.refresh_from_db()
    assert text.status == RunStatus.SLEEPING
    memo = text.steps.get(step_id="wait")
    assert abs(memo.wake_at - memo.started_at - timedelta(days=3)) < timedelta(seconds=1)
    assert finish(text, skip_time=True).status == RunStatus.COMPLETED


def test_run_of_a_workflow_unknown_to_this_worker_is_deferred_not_failed():
    run = start("test/steps", {"steps": 1})
    WorkflowRun.objects.filter(pk=run.pk).update(workflow_id="deployed-elsewhere")
    assert engine.execute(run.pk) == "deferred"
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.wake_at is not None


def test_context_carries_the_event_run_and_workspace():
    Workspace.objects.create(slug="acme")
    run = finish(start("test/wild/x", {"k": 1}, workspace="acme"))
    assert run.output == {"name": "test/wild/x"}
    from workflows.context import Context
    from workflows.execution import Execution
    from workflows.registry import get

    ctx = Context(Execution(run, get("t-wild"), "token"))
    assert ctx.run_id == str(run.pk) and ctx.workspace == "acme"
    assert ctx.event.name == "test/wild/x" and ctx.event.data == {"k": 1}
    assert isinstance(ctx.event.ts, int) and ctx.attempt == 0


def test_a_lost_database_connection_outside_steps_interrupts_and_does_not_fail_the_run():
    from django.db import OperationalError

    from workflows import registry, workflow
    from workflows.exceptions import EngineInterrupt

    @workflow(id="t-conn-lost", trigger="test/conn-lost")
    def conn_lost(ctx):
        ctx.step.run("one", lambda: 1)
        raise OperationalError("server closed the connection unexpectedly")

    try:
        run = start("test/conn-lost")
        with no_broker(), pytest.raises(EngineInterrupt):
            engine.execute(run.pk)
    finally:
        registry.unregister("t-conn-lost")
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.error is None  # resumed once the lease ends
    assert run.steps.get().status == StepStatus.COMPLETED
