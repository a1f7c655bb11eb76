"""Concurrency limits, throttles and priority with real worker processes.

Every execution of a step body is recorded as a span (start and end time); the limit is
checked by counting the spans open at one moment, across every worker process.
"""

from collections import Counter

import pytest

import eventbus
from tests.conftest import wait_until
from tests.testapp.models import Span, most_at_once
from workflows.models import RunStatus, WorkflowRun

pytestmark = pytest.mark.worker

#: A worker that executes only what it is rung for: no dispatcher rings on a timer, so
#: a run handed no slot by the run that freed it would never start.
RUNG_ONLY = {"WORKFLOWS_TEST_NO_DISPATCHER": "1"}


def all_completed(count: int, timeout: float = 120, **filters):
    def check():
        runs = WorkflowRun.objects.filter(parent__isnull=True, **filters)
        return runs.count() == count and not runs.exclude(status=RunStatus.COMPLETED).exists()

    wait_until(check, timeout=timeout, what=f"{count} runs to complete")


def spans(prefix: str) -> list[Span]:
    return list(Span.objects.filter(label__startswith=prefix).order_by("started"))


#: ... and whose tasks execute one run each: a run handed a slot gets a message of its
#: own, which any worker may take.
MESSAGE_PER_RUN = {**RUNG_ONLY, "WORKFLOWS_TEST_RING_BATCH_SIZE": "1"}


def six_runs_of_a_limit_of_one(seconds: float) -> set[int]:
    """Send six runs of a workflow with ``concurrency=1``; once all completed, check that
    they never overlapped and return the pids of the processes that executed them."""
    eventbus.send_batch([{"name": "flow/one", "data": {"seconds": seconds}} for _ in range(6)])
    all_completed(6)
    recorded = spans("one")
    assert len(recorded) == 6
    assert most_at_once(recorded) == 1
    return {span.pid for span in recorded}


def test_a_limit_holds_across_workers_and_each_freed_slot_is_handed_on(start_worker):
    start_worker(concurrency=2, env=MESSAGE_PER_RUN)
    start_worker(concurrency=2, env=MESSAGE_PER_RUN)
    assert len(six_runs_of_a_limit_of_one(0.3)) > 1  # the runs really went to several


def test_the_process_that_frees_a_slot_starts_the_next_run_in_line_itself(start_worker):
    # The task that executed the run freeing the slot executes the run handed it, with
    # no message: the line moves on in one process (a message each would go to
    # whichever pool process is free, and the one still ending its run is not). The six
    # runs take 1.2 s: the task may hand on for longer here.
    start_worker(concurrency=2, env={**RUNG_ONLY, "WORKFLOWS_TEST_HAND_ON_SECONDS": "30"})
    assert len(six_runs_of_a_limit_of_one(0.2)) == 1


def test_a_task_stops_handing_on_after_hand_on_seconds_and_rings_the_rest(start_worker):
    # Runs of 0.4 s, a budget of 0.6 s: a task starts a second run of the line (at
    # about 0.4 s) but no third one (it could start at 0.8 s at the earliest): the third
    # is rung, and another task takes the line on from there.
    start_worker(concurrency=1, env={**RUNG_ONLY, "WORKFLOWS_TEST_HAND_ON_SECONDS": "0.6"})
    eventbus.send_batch(
        [{"name": "flow/one", "data": {"seconds": 0.4, "tag_task": True}} for _ in range(5)]
    )
    all_completed(5)
    recorded = spans("one:")
    assert len(recorded) == 5 and most_at_once(recorded) == 1
    runs_per_task = Counter(span.label for span in recorded)
    assert max(runs_per_task.values()) <= 2, runs_per_task  # none after 0.6 s
    assert len(runs_per_task) >= 3, runs_per_task  # the rest were rung, task after task


def test_each_key_has_its_own_slots_and_both_limits_hold(start_worker):
    start_worker(concurrency=3, env=RUNG_ONLY)
    start_worker(concurrency=3, env=RUNG_ONLY)
    accounts = ["a", "b", "c", "d"]
    eventbus.send_batch(
        [{"name": "flow/keyed", "data": {"account": acc, "seconds": 0.4}} for acc in accounts * 3]
    )
    all_completed(12)
    for account in accounts:
        assert most_at_once(spans(f"keyed:{account}")) == 1, account
    everything = spans("keyed:")
    assert most_at_once(everything) <= 3  # the workflow-wide limit
    assert most_at_once(everything) >= 2  # different accounts did run side by side


def test_a_pool_limits_every_workflow_naming_it(start_worker):
    start_worker(concurrency=3)
    start_worker(concurrency=3)
    eventbus.send_batch(
        [{"name": f"flow/pool.{side}", "data": {"seconds": 0.4}} for side in "ab" * 4]
    )
    all_completed(8)
    assert most_at_once(spans("pool")) == 2


def test_parallel_branches_count_against_the_limit(start_worker):
    start_worker(concurrency=3)
    start_worker(concurrency=3)
    run_id = eventbus.send("flow/fanned", {"n": 5, "seconds": 0.4})
    all_completed(1, event_id=run_id)
    recorded = spans("fanned")
    assert len(recorded) == 5
    assert most_at_once(recorded) == 2


def test_a_sleeping_run_holds_no_slot(start_worker):
    start_worker(concurrency=2, env=RUNG_ONLY)
    eventbus.send("flow/one", {"seconds": 0.1, "sleep": 3})
    wait_until(lambda: spans("one"), what="the first run's first step")
    eventbus.send("flow/one", {"seconds": 0.1})
    all_completed(2)
    first_before, second, first_after = spans("one")[0], spans("one")[1], spans("one:after")[0]
    # The second run executed while the first slept between its two steps.
    assert first_before.ended <= second.started and second.ended <= first_after.started


def test_one_keys_backlog_does_not_hold_up_another_key(start_worker):
    start_worker(concurrency=2)
    eventbus.send_batch(
        [{"name": "flow/fair", "data": {"tenant": "big", "seconds": 0.05}} for _ in range(200)]
    )
    event_id = eventbus.send("flow/fair", {"tenant": "small", "seconds": 0.05})
    all_completed(1, event_id=event_id, timeout=60)
    finished_big = WorkflowRun.objects.filter(
        workflow_id="f-fair", status=RunStatus.COMPLETED, event__data__tenant="big"
    ).count()
    # "small" finished while most of "big"'s line was still waiting for its one slot.
    assert finished_big < 100, finished_big
    all_completed(201, timeout=180)
    assert most_at_once(spans("fair:big")) == 1


def test_a_slot_held_by_a_killed_worker_is_freed_when_its_lease_expires(start_worker):
    doomed = start_worker(concurrency=1)
    eventbus.send("flow/one", {"seconds": 60})
    wait_until(
        lambda: WorkflowRun.objects.filter(status=RunStatus.RUNNING, workflow_id="f-one").exists(),
        what="the first run to hold the slot",
    )
    eventbus.send("flow/one", {"seconds": 0.1})
    held = WorkflowRun.objects.get(workflow_id="f-one", status=RunStatus.QUEUED)
    assert held.held_by == "concurrency wf:f-one"
    doomed.kill()
    start_worker(concurrency=2)
    # After the lease (4 s in tests), the slot is free: the waiting run gets it (or the
    # dead one is taken over first); either way the limit holds and nothing is stuck.
    wait_until(
        lambda: WorkflowRun.objects.filter(pk=held.pk, status=RunStatus.COMPLETED).exists(),
        timeout=90,
        what="the waiting run to start once the dead worker's lease expired",
    )
    assert most_at_once(spans("one")) == 1


def test_a_throttle_spaces_first_starts_and_delays_none_for_good(start_worker):
    start_worker(concurrency=3)
    eventbus.send_batch(
        [{"name": "flow/throttled", "data": {"key": "k", "seconds": 0}} for _ in range(4)]
        + [{"name": "flow/throttled", "data": {"key": "other", "seconds": 0}}]
    )
    all_completed(5)
    runs = WorkflowRun.objects.filter(workflow_id="f-throttled")
    keyed = list(runs.filter(event__data__key="k").order_by("throttle_at"))
    assert len(keyed) == 4
    # 2 per 2 s: each first start reserved one interval (1 s) after the one before, and
    # none started before its reservation (a busy worker may start one later).
    reserved = [run.throttle_at for run in keyed]
    gaps = [(b - a).total_seconds() for a, b in zip(reserved, reserved[1:], strict=False)]
    assert min(gaps) >= 0.999999, gaps
    assert all(run.started_at >= run.throttle_at for run in keyed)
    # Another key is not spaced behind "k": its start was allowed at its first claim.
    (other,) = runs.filter(event__data__key="other")
    assert other.throttle_at == other.started_at


def test_priority_orders_the_line_for_a_slot(start_worker):
    start_worker(concurrency=2, env=RUNG_ONLY)
    eventbus.send("flow/priority", {"plan": "free", "seconds": 2})
    wait_until(
        lambda: WorkflowRun.objects.filter(
            status=RunStatus.RUNNING, workflow_id="f-priority"
        ).exists(),
        what="the first run to hold the slot",
    )
    eventbus.send_batch(
        [
            {"name": "flow/priority", "data": {"plan": "free", "n": i, "seconds": 0.1}}
            for i in range(3)
        ]
    )
    pro_event = eventbus.send("flow/priority", {"plan": "pro", "seconds": 0.1})
    all_completed(5)
    order = [WorkflowRun.objects.get(pk=span.run_id).event_id for span in spans("priority")]
    assert str(order[1]) == str(pro_event)  # next after the run that held the slot
