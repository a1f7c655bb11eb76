"""invoke, wait_for_event, parallel, cancellation, timeouts, failure handlers: real workers."""

import time

import pytest

import eventbus
from eventbus.models import Event, EventStatus
from tests.conftest import wait_until
from tests.testapp.models import LedgerEntry
from workflows import lifecycle, services
from workflows.models import TERMINAL_STATUSES, RunStatus, StepStatus, Wait, WorkflowRun

pytestmark = pytest.mark.worker


def run_of(event_id):
    return WorkflowRun.objects.get(event_id=event_id, parent__isnull=True)


def ended(run, timeout=60):
    def check():
        run.refresh_from_db()
        return run.status in TERMINAL_STATUSES

    wait_until(check, timeout=timeout, what=f"run {run.workflow_id} to end")
    return run


def status_is(run, status, timeout=60):
    def check():
        run.refresh_from_db()
        return run.status == status

    wait_until(check, timeout=timeout, what=f"run {run.workflow_id} to be {status}")
    return run


def test_wait_for_event_match_condition_and_timeout(worker):
    matched = run_of(eventbus.send("coord/order.created", {"orderId": "w1"}))
    conditional = run_of(eventbus.send("coord/big-order.created", {"orderId": "w2"}))
    timing_out = run_of(eventbus.send("coord/order.created", {"orderId": "w3", "timeout": 2}))
    for run in (matched, conditional):
        status_is(run, RunStatus.WAITING)
        assert run.lease_owner is None  # no worker is held while it waits
    eventbus.send("coord/order.paid", {"orderId": "w2", "amount": 10})  # condition not met
    eventbus.send("coord/order.paid", {"orderId": "w1", "amount": 1})
    eventbus.send("coord/order.paid", {"orderId": "w2", "amount": 500})
    assert ended(matched).output["paid"] == {"orderId": "w1", "amount": 1}, worker.tail()
    assert ended(conditional).output == {"amount": 500}
    assert ended(timing_out).output["paid"] is None
    assert not Wait.objects.exists()


def test_events_racing_the_wait_are_never_lost(worker):
    """Send each awaited event the moment its wait is recorded, from another process."""
    runs = [
        run_of(eventbus.send("coord/order.created", {"orderId": f"r{i}", "timeout": 120}))
        for i in range(15)
    ]
    pending = {run.pk: run for run in runs}
    deadline = time.monotonic() + 90
    while pending and time.monotonic() < deadline:
        # The instant a run's wait step has begun (its memo row exists), send its event.
        began = set(
            Wait.objects.filter(run_id__in=list(pending)).values_list("run_id", flat=True)
        ) | set(
            WorkflowRun.objects.filter(pk__in=list(pending), steps__step_id="paid").values_list(
                "pk", flat=True
            )
        )
        for run_id in began:
            run = pending.pop(run_id)
            eventbus.send("coord/order.paid", {"orderId": run.event.data["orderId"]})
        time.sleep(0.005)
    assert not pending, "some waits never began"
    for run in runs:
        assert ended(run, timeout=90).output["paid"] is not None, worker.tail()


def test_invoke_child_result_failure_and_cancellation(worker):
    ok = run_of(eventbus.send("coord/parent", {"value": 5}))
    failing = run_of(eventbus.send("coord/parent", {"child": {"fail": True}}))
    cancelled = run_of(eventbus.send("coord/parent", {"child": {"sleep": 3600}}))
    unknown = run_of(eventbus.send("coord/parent", {"target": "nope"}))
    assert ended(ok).output == {"result": {"doubled": 10}}, worker.tail()
    assert ended(failing).output["error"] == "ChildRunFailed"
    assert ended(unknown).output["error"] == "UnknownWorkflowError"
    status_is(cancelled, RunStatus.WAITING)
    kid = wait_until(
        lambda: cancelled.children.filter(status=RunStatus.SLEEPING).first(), what="the child"
    )
    assert services.cancel_run(kid.pk)
    assert ended(cancelled).output["error"] == "ChildRunCancelled"
    # Each parent started exactly one child, however often it was executed.
    for parent in (ok, failing, cancelled):
        assert parent.children.count() == 1


def test_many_parents_with_instant_children(worker):
    """Children that end at once (before their parent could ever be rung) resume it."""
    runs = [run_of(eventbus.send("coord/parent", {"value": i})) for i in range(20)]
    for i, run in enumerate(runs):
        assert ended(run, timeout=120).output == {"result": {"doubled": 2 * i}}, worker.tail()


def test_parallel_branches_run_at_the_same_time_in_separate_tasks(start_worker):
    start_worker(concurrency=2)
    start_worker(concurrency=2)
    run = run_of(eventbus.send("coord/parallel", {"n": 3, "seconds": 2}))
    ended(run, timeout=90)
    assert run.status == RunStatus.COMPLETED, run.error
    results = run.output["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    # Branches ran in different processes and overlapped in time.
    overlapping = [
        (a["index"], b["index"])
        for a in results
        for b in results
        if a["index"] < b["index"] and a["start"] < b["end"] and b["start"] < a["end"]
    ]
    assert overlapping, results
    assert len({r["pid"] for r in results}) >= 2
    assert LedgerEntry.objects.filter(step="before").count() == 1


def test_cancel_while_a_step_executes_keeps_its_result_and_runs_nothing_more(worker):
    run = run_of(eventbus.send("coord/subscription.started", {"userId": "u7", "step_seconds": 3}))
    status_is(run, RunStatus.RUNNING)
    time.sleep(0.5)  # inside the 3-second step
    eventbus.send("coord/subscription.ended", {"userId": "u7"})
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    # The step that was executing finishes and its memo is kept; nothing after it runs.
    step = wait_until(
        lambda: run.steps.filter(step_id="first", status=StepStatus.COMPLETED).first(),
        what="the running step's memo",
    )
    assert step.output["step"] == "first"
    time.sleep(2)
    assert list(run.steps.values_list("step_id", flat=True)) == ["first"]
    assert not Event.objects.filter(name="coord/reminder").exists()
    assert LedgerEntry.objects.filter(run_id=str(run.pk)).count() == 1


def test_cancelled_sleeping_run_does_not_wake_and_its_deferred_events_never_fire(worker):
    # A control run sleeps as long, started after it and not cancelled: once it has woken
    # and finished, the cancelled run would have woken too.
    run = run_of(eventbus.send("coord/subscription.started", {"userId": "u8", "sleep": 3}))
    control = run_of(eventbus.send("coord/subscription.started", {"userId": "u9", "sleep": 3}))
    status_is(run, RunStatus.SLEEPING)
    reminder = Event.objects.get(name="coord/reminder", data__userId="u8")
    assert services.cancel_run(run.pk)
    reminder.refresh_from_db()
    assert reminder.status == EventStatus.CANCELLED
    assert ended(control).status == RunStatus.COMPLETED, worker.tail()
    assert control.steps.filter(step_id="second").exists()
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert not run.steps.filter(step_id="second").exists()


def test_timeouts_failure_handler_and_system_events(worker):
    slow = run_of(eventbus.send("coord/slow"))
    doomed = run_of(eventbus.send("coord/doomed", {"why": "test"}))
    assert ended(slow, timeout=30).status == RunStatus.CANCELLED, worker.tail()
    assert "did not finish within" in slow.error["message"]
    assert ended(doomed).status == RunStatus.FAILED
    handler = wait_until(
        lambda: WorkflowRun.objects.filter(
            workflow_id="c-doomed:on-failure", status=RunStatus.COMPLETED
        ).first(),
        what="the failure handler",
    )
    assert handler.output["failed_run"] == str(doomed.pk)
    names = set(
        Event.objects.filter(name__startswith="workflows/run.").values_list("name", "data__run_id")
    )
    assert (lifecycle.RUN_CANCELLED, str(slow.pk)) in names
    assert (lifecycle.RUN_FAILED, str(doomed.pk)) in names
    assert (lifecycle.RUN_FINISHED, str(doomed.pk)) in names
