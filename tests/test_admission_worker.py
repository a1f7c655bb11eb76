"""Admission with real worker processes (their dispatcher threads fire the debounce and
batch timers): rate limits, debounce, batches, singletons and idempotency end to end."""

import pytest

import eventbus
from tests.conftest import wait_until
from workflows.models import (
    TERMINAL_STATUSES,
    BatchEvent,
    EventSkip,
    RunStatus,
    SkipReason,
    WorkflowRun,
)

pytestmark = pytest.mark.worker


def runs(workflow_id: str, **filters):
    return WorkflowRun.objects.filter(workflow_id=workflow_id, parent__isnull=True, **filters)


def all_ended(workflow_id: str, count: int):
    def check() -> bool:
        found = list(runs(workflow_id).values_list("status", flat=True))
        return len(found) == count and all(status in TERMINAL_STATUSES for status in found)

    return check


def status_is(run, status, timeout=60):
    def check():
        run.refresh_from_db()
        return run.status == status

    wait_until(check, timeout=timeout, what=f"run {run.workflow_id} to be {status}")
    return run


def test_debounce_starts_one_run_per_burst_with_its_last_event(worker):
    bursts = {
        user: [eventbus.send("adm/typed", {"user": user, "n": n}) for n in range(4)]
        for user in ("w1", "w2", "w3")
    }
    assert not runs("adm-debounce").exists()  # nothing runs while the burst goes on
    wait_until(all_ended("adm-debounce", 3), timeout=60, what="one debounce run per burst")
    for user, ids in bursts.items():
        run = runs("adm-debounce", event__data__user=user).get()
        assert run.status == RunStatus.COMPLETED, worker.tail()
        assert str(run.event_id) == ids[-1]
        assert run.output == {"last": 3, "events": [ids[-1]]}
    skipped = EventSkip.objects.filter(workflow_id="adm-debounce")
    assert sorted(str(s.event_id) for s in skipped) == sorted(
        i for ids in bursts.values() for i in ids[:-1]
    )
    assert {s.reason for s in skipped} == {SkipReason.DEBOUNCED}


def test_batches_fire_when_full_and_on_timeout_and_keep_their_events_across_a_sleep(worker):
    ids = []
    for _ in range(3):  # 12 events: two full batches of 5, the last 2 on the timeout
        ids += eventbus.send_batch(
            [{"name": "adm/row", "data": {"table": "W", "sleep": 0.5}} for _ in range(4)]
        )
    assert runs("adm-batch").count() == 2  # the full ones exist as soon as send returns
    wait_until(all_ended("adm-batch", 3), timeout=60, what="three batch runs")
    outputs = {str(r.event_id): r.output for r in runs("adm-batch", status=RunStatus.COMPLETED)}
    assert outputs[ids[0]]["events"] == ids[0:5], worker.tail()
    assert outputs[ids[5]]["events"] == ids[5:10]
    assert outputs[ids[10]]["events"] == ids[10:12]
    assert all(output["before"] == output["events"] for output in outputs.values())
    assert BatchEvent.objects.filter(workflow_id="adm-batch").count() == 12
    # adm-plain is subscribed to adm/row too, and got every event.
    wait_until(all_ended("adm-plain", 12), timeout=60, what="the plain subscriber's runs")


def test_singleton_skip_and_cancel_with_a_worker(worker):
    first = runs("adm-single-skip", event_id=eventbus.send("adm/bill", {"account": "s1"})).get()
    status_is(first, RunStatus.WAITING)
    eventbus.send("adm/bill", {"account": "s1"})
    assert runs("adm-single-skip").count() == 1
    old = runs("adm-single-cancel", event_id=eventbus.send("adm/sync", {"account": "s1"})).get()
    status_is(old, RunStatus.WAITING)
    new = runs("adm-single-cancel", event_id=eventbus.send("adm/sync", {"account": "s1"})).get()
    old.refresh_from_db()
    assert old.status == RunStatus.CANCELLED
    status_is(new, RunStatus.WAITING)
    eventbus.send("adm/release", {"account": "s1"})
    status_is(first, RunStatus.COMPLETED)
    status_is(new, RunStatus.COMPLETED)


def test_rate_limit_and_idempotency_with_a_worker(worker):
    for _ in range(5):
        eventbus.send("adm/import", {"user": "r1"})
        eventbus.send("adm/order", {"orderId": "r1"})
    wait_until(all_ended("adm-rate", 2), timeout=60, what="two rate-limited runs")
    wait_until(all_ended("adm-idem", 1), timeout=60, what="one idempotent run")
    wait_until(all_ended("adm-plain", 10), timeout=60, what="every plain run")
    assert set(runs("adm-rate").values_list("status", flat=True)) == {RunStatus.COMPLETED}
    assert EventSkip.objects.filter(reason=SkipReason.RATE_LIMITED).count() == 3
    assert EventSkip.objects.filter(reason=SkipReason.IDEMPOTENT).count() == 4
