"""Concurrency: duplicate messages to many workers, and dispatchers running side by side.

The claim of a run is a conditional ``UPDATE`` fenced by a lease token, and a scheduled
event is emitted by a conditional ``UPDATE`` of rows taken with ``SKIP LOCKED``: these
tests race real processes (and threads with their own connections) against them.
"""

import threading
import time
from collections import Counter

import pytest
from django.db import connection, connections, transaction
from django.db.models import Count

import eventbus
from eventbus import bus
from eventbus.models import Event, EventStatus
from tests.chaos.workflows import EMISSION_LOG_ENV
from tests.conftest import Dispatcher, all_finished, wait_until
from tests.testapp.models import EmissionLog, LedgerEntry
from workflows import tasks, waits
from workflows.models import (
    RunStatus,
    StepResult,
    StepStatus,
    Wait,
    WaitKind,
    WorkflowRun,
)
from workflows.testing import drain, no_broker

pytestmark = pytest.mark.worker


def test_duplicate_messages_to_many_workers_never_run_a_step_twice(start_worker):
    workers = [start_worker(concurrency=2) for _ in range(3)]
    with no_broker():  # no first bell: every message below is one we chose to send
        for index in range(12):
            eventbus.send("test/steps", {"steps": 4, "step_seconds": 0.05, "sleep": 1, "i": index})
    run_ids = [str(pk) for pk in WorkflowRun.objects.values_list("pk", flat=True)]
    for _ in range(8):  # each run is rung 8 times at once, spread over 3 workers
        for run_id in run_ids:
            tasks.execute_run.delay(run_id)
    wait_until(all_finished(12), timeout=180, what="every run, rung 8 times each")
    assert Counter(WorkflowRun.objects.values_list("status", flat=True)) == {"completed": 12}, [
        worker.tail() for worker in workers
    ]
    # Each step body ran once, and each step has one memo (4 runs + 1 sleep per run).
    per_step = LedgerEntry.objects.values("run_id", "step").annotate(n=Count("id"))
    assert len(per_step) == 12 * 4
    assert {row["n"] for row in per_step} == {1}
    assert StepResult.objects.count() == 12 * 5
    # The messages really went to several workers.
    assert len(set(LedgerEntry.objects.values_list("pid", flat=True))) > 1


def test_two_dispatcher_processes_never_emit_an_event_twice(transactional_db, monkeypatch):
    monkeypatch.setenv(EMISSION_LOG_ENV, "1")
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.chaos.settings",
        "CHAOS_DISPATCH_BATCH": "7",  # small batches: the two interleave on the same rows
        EMISSION_LOG_ENV: "1",
    }
    dispatchers = [Dispatcher(env=env).start() for _ in range(2)]
    sent: list[str] = []
    try:
        # On SQLite one writer can keep the database lock for a whole round while the
        # other backs off, so up to three rounds are sent until both processes have
        # emitted; every round must be exactly-once either way.
        for _ in range(3):
            ts = bus.now_ms() + 3000
            with no_broker():
                sent += eventbus.send_batch(
                    [{"name": "test/wild/race", "data": {"i": i}, "ts": ts} for i in range(300)]
                )
            wait_until(
                lambda: not Event.objects.filter(status=EventStatus.SCHEDULED).exists(),
                timeout=120,
                what="both dispatchers to emit every event",
            )
            early = EmissionLog.objects.filter(delivered_ms__lt=ts, event_id__in=sent[-300:])
            assert not early.exists()
            per_pid = Counter(EmissionLog.objects.values_list("pid", flat=True))
            if len(per_pid) == 2:
                break
    finally:
        for dispatcher in dispatchers:
            dispatcher.stop()
    deliveries = Counter(str(pk) for pk in EmissionLog.objects.values_list("event_id", flat=True))
    assert sorted(deliveries) == sorted(sent)
    assert set(deliveries.values()) == {1}, [d.tail() for d in dispatchers]
    runs = Counter(WorkflowRun.objects.values_list("event_id", "workflow_id"))
    assert len(runs) == len(sent) and set(runs.values()) == {1}
    # Both processes emitted (small batches, 300 due rows): they really raced.
    assert set(per_pid) == {d.process.pid for d in dispatchers}, per_pid


def test_racing_dispatcher_passes_on_separate_connections_emit_each_event_once(
    transactional_db, monkeypatch
):
    if connection.vendor != "postgresql":
        pytest.skip("row locks (FOR UPDATE SKIP LOCKED) are raced on PostgreSQL only")
    monkeypatch.setenv(EMISSION_LOG_ENV, "1")
    ts = bus.now_ms() + 1500
    with no_broker():
        ids = eventbus.send_batch(
            [{"name": "test/exact", "data": {"i": i}, "ts": ts} for i in range(400)]
        )
    start = threading.Barrier(4)
    emitted: list[int] = []
    errors: list[BaseException] = []

    def dispatch() -> None:
        try:
            start.wait()
            while bus.now_ms() <= ts:  # all four start on the same due rows
                time.sleep(0.01)
            mine = 0
            while Event.objects.filter(status=EventStatus.SCHEDULED).exists():
                with no_broker():
                    mine += bus.emit_due(limit=5)
            emitted.append(mine)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=dispatch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sum(emitted) == 400, emitted
    deliveries = Counter(str(pk) for pk in EmissionLog.objects.values_list("event_id", flat=True))
    assert sorted(deliveries) == sorted(ids) and set(deliveries.values()) == {1}
    runs = Counter(WorkflowRun.objects.values_list("event_id", "workflow_id"))
    assert len(runs) == 400 and set(runs.values()) == {1}
    assert sum(1 for n in emitted if n) > 1, emitted  # the passes really shared the work


def test_branches_ending_at_once_wake_their_parent(transactional_db, monkeypatch):
    """Two branches settle their waits in overlapping transactions: the last one wakes it.

    Each transaction deletes its own wait and then asks whether any remain; without an
    order between them, each sees the other's wait (not yet committed) and neither wakes
    the parent, which then waits forever.
    """
    if connection.vendor != "postgresql":
        pytest.skip("SQLite runs one writing transaction at a time; the overlap needs PostgreSQL")
    with no_broker():
        eventbus.send("coord/parallel", {"n": 2})
        drain(max_executions=1)  # the parent records its branches and suspends
        parent = WorkflowRun.objects.get(parent__isnull=True)
    assert parent.status == RunStatus.WAITING
    pending = list(Wait.objects.filter(run=parent, kind=WaitKind.PARALLEL))
    assert len(pending) == 2
    both_deleted = threading.Barrier(2)
    remain = waits._waits_remain

    def after_both_deletes(run_id):
        try:
            both_deleted.wait(timeout=2)  # times out when the other one takes its turn after us
        except threading.BrokenBarrierError:
            pass
        return remain(run_id)

    monkeypatch.setattr(waits, "_waits_remain", after_both_deletes)
    errors: list[BaseException] = []

    def settle(wait) -> None:
        try:
            with no_broker(), transaction.atomic():
                waits.resolve(wait, StepStatus.COMPLETED)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=settle, args=(wait,)) for wait in pending]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    parent.refresh_from_db()
    assert parent.status == RunStatus.QUEUED
    assert not Wait.objects.filter(run=parent).exists()
