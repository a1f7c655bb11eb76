"""Batched bells and the single-statement fast paths of the leases (issue 6)."""

from collections import Counter

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

import eventbus
from tests.conftest import all_finished, assert_no_committed_step_ran_again, wait_until
from tests.testapp.models import LedgerEntry
from workflows import doorbell, runstore, tasks
from workflows.exceptions import LeaseLost, RunCancelled
from workflows.models import RunStatus, StepResult, WorkflowRun
from workflows.testing import no_broker


def queued_runs(name: str, count: int, data: dict) -> list[str]:
    """``count`` runs of ``name``'s workflow, stored but not rung."""
    with no_broker():
        for index in range(count):
            eventbus.send(name, {**data, "i": index})
    runs = WorkflowRun.objects.order_by("created_at")
    return [str(pk) for pk in runs.values_list("pk", flat=True)]


def ledger_counts() -> Counter:
    return Counter(LedgerEntry.objects.values_list("run_id", "step"))


def test_chunks_share_the_work_and_respect_the_batch_size():
    ids = [str(i) for i in range(1000)]
    parts = doorbell.chunks(ids, 20)
    assert len(parts) == 50 and all(len(p) == 20 for p in parts)
    assert [i for p in parts for i in p] == ids
    assert [len(p) for p in doorbell.chunks(ids[:8], 20)] == [2, 2, 2, 2]
    assert [len(p) for p in doorbell.chunks(ids[:3], 20)] == [1, 1, 1]
    assert [len(p) for p in doorbell.chunks(ids[:5], 1)] == [1] * 5


@pytest.mark.worker
def test_a_batch_message_runs_each_run_once_whatever_its_duplicates(worker):
    ids = queued_runs("test/steps", 10, {"steps": 2})
    tasks.execute_runs.delay([*ids, *ids[:3], "not-a-run-id"])
    tasks.execute_runs.delay(ids)  # a duplicate delivery
    wait_until(all_finished(10), timeout=60, what="the batch")
    assert set(WorkflowRun.objects.values_list("status", flat=True)) == {RunStatus.COMPLETED}
    counts = ledger_counts()
    assert len(counts) == 20 and set(counts.values()) == {1}, counts


@pytest.mark.worker
def test_a_fan_out_rung_in_batches_completes(worker):
    eventbus.send("test/fanout", {"n": 30})
    wait_until(all_finished(31), timeout=60, what="the fan-out")
    assert WorkflowRun.objects.filter(status=RunStatus.COMPLETED).count() == 31
    assert set(ledger_counts().values()) == {1}


@pytest.mark.worker
def test_sigkill_mid_batch_loses_nothing_and_repeats_no_committed_step(start_worker):
    first = start_worker(concurrency=1)
    ids = queued_runs("test/steps", 6, {"steps": 2, "step_seconds": 0.4})
    tasks.execute_runs.delay(ids)  # one child executes them in turn
    wait_until(lambda: LedgerEntry.objects.count() >= 3, timeout=60, what="the batch to start")
    first.kill()
    untouched = WorkflowRun.objects.filter(status=RunStatus.QUEUED, started_at__isnull=True)
    assert untouched.exists()  # runs still waiting in the killed batch
    start_worker()  # its dispatcher rings them again once they are due
    wait_until(all_finished(6), timeout=120, what="recovery after SIGKILL")
    assert set(WorkflowRun.objects.values_list("status", flat=True)) == {RunStatus.COMPLETED}
    assert StepResult.objects.filter(kind="run", status="completed").count() == 12
    assert_no_committed_step_ran_again()


def memo_for(run_id: str, step_id: str) -> StepResult:
    return StepResult(
        run_id=run_id,
        step_id=step_id,
        key=step_id,
        position=0,
        kind="run",
        status="completed",
        output={"step": step_id, "n": [1, 2]},
    )


@pytest.mark.django_db(transaction=True)
def test_a_worker_whose_lease_was_taken_over_writes_no_memo():
    run_id = queued_runs("test/steps", 1, {"steps": 1})[0]
    assert runstore.claim(run_id, "old") is not None
    WorkflowRun.objects.filter(pk=run_id).update(lease_expires_at="2000-01-01T00:00:00Z")
    assert runstore.claim(run_id, "new") is not None
    with pytest.raises(LeaseLost):
        runstore.save_step(run_id, "old", memo_for(run_id, "a"))
    with pytest.raises(LeaseLost):
        runstore.save_step(run_id, "old", memo_for(run_id, "b"), keep_if_cancelled=True)
    assert not StepResult.objects.exists()
    runstore.save_step(run_id, "new", memo_for(run_id, "c"))
    stored = StepResult.objects.get()
    assert stored.step_id == "c" and stored.output == {"step": "c", "n": [1, 2]}


@pytest.mark.django_db(transaction=True)
def test_a_cancelled_run_keeps_only_the_memo_of_a_body_that_ran():
    run_id = queued_runs("test/steps", 1, {"steps": 1})[0]
    assert runstore.claim(run_id, "tok") is not None
    assert runstore.cancel(run_id)
    with pytest.raises(RunCancelled):
        runstore.save_step(run_id, "tok", memo_for(run_id, "a"))
    assert not StepResult.objects.exists()
    with pytest.raises(RunCancelled):
        runstore.save_step(run_id, "tok", memo_for(run_id, "b"), keep_if_cancelled=True)
    assert list(StepResult.objects.values_list("step_id", flat=True)) == ["b"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="the fast paths are PostgreSQL's")
def test_claim_and_a_step_are_one_statement_each_on_postgresql():
    run_id = queued_runs("test/steps", 1, {"steps": 1})[0]
    with CaptureQueriesContext(connection) as claim_queries:
        run = runstore.claim(run_id, "tok")
    assert run.status == RunStatus.RUNNING and run.event.name == "test/steps"
    assert run.workspace.slug and run.lease_owner == "tok"
    with CaptureQueriesContext(connection) as step_queries:
        runstore.save_step(run_id, "tok", memo_for(run_id, "a"))
    assert len(claim_queries) == 1 and len(step_queries) == 1
    assert runstore.claim(run_id, "other") is None  # held, not expired
