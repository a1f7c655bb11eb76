"""Concurrency limits, throttles and priority, in-process: the claim's decisions.

Claims are made here by hand with lease tokens, so a test can hold a slot as long as it
likes; ``test_flow_control_worker.py`` shows the same with real worker processes.
"""

import io
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

import eventbus
from workflows import runstore, slots, workflow
from workflows.models import RunStatus, ThrottleState, WorkflowRun
from workflows.testing import drain, no_broker

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _commits(django_capture_on_commit_callbacks):
    """Run the callbacks of each (test-wrapped) commit, so bells are seen."""
    global _capture
    _capture = django_capture_on_commit_callbacks
    yield
    _capture = None


_capture = None


def send(name, data=None, **options):
    """Send an event; the run it started and the bells its commit rang."""
    with no_broker() as rung, _capture(execute=True):
        event_id = eventbus.send(name, data or {}, **options)
    return WorkflowRun.objects.get(event_id=event_id, parent__isnull=True), rung


def finish(run, token):
    """End a claimed run; the bells its commit rang."""
    with no_broker() as rung, _capture(execute=True):
        assert runstore.finish(run.pk, token, RunStatus.COMPLETED)
    return rung


def claim(run):
    token = uuid.uuid4().hex
    return runstore.claim(run.pk, token), token


def test_a_run_over_the_limit_is_held_queued_and_handed_the_slot_when_it_frees():
    first, rung = send("flow/one")
    assert rung == [str(first.pk)]
    second, rung = send("flow/one")
    assert rung == []  # the group is not full yet, but the first was rung for its slot
    claimed, token = claim(first)
    assert claimed is not None
    assert claim(second)[0] is None
    second.refresh_from_db()
    assert second.status == RunStatus.QUEUED and second.held_by == "concurrency wf:f-one"
    assert finish(first, token) == [str(second.pk)]
    assert claim(second)[0] is not None


def test_a_claim_told_the_run_was_handed_a_slot_still_asks_and_survives_a_wrong_hint():
    # A task executes the runs handed a slot by the runs it executed, and tells the
    # claim so (it then asks flow control first). The hint never decides alone.
    first, _ = send("flow/one")
    second, _ = send("flow/one")
    token = uuid.uuid4().hex
    assert runstore.claim(first.pk, token, shaped=True) is not None
    assert runstore.claim(second.pk, uuid.uuid4().hex, shaped=True) is None  # no room
    second.refresh_from_db()
    assert second.status == RunStatus.QUEUED and second.held_by == "concurrency wf:f-one"
    plain, _ = send("test/steps", {"n": 1})  # no flow control: the hint is wrong
    claimed = runstore.claim(plain.pk, uuid.uuid4().hex, shaped=True)
    assert claimed is not None and claimed.status == RunStatus.RUNNING
    assert runstore.claim(plain.pk, uuid.uuid4().hex, shaped=True) is None  # now running


def test_what_a_hand_over_read_of_a_run_is_a_hint_the_claim_checks_again():
    # A run handed a slot by this process is claimed with what the hand-over read of it
    # (``slots.handed_hint``). Read before another claim took the slot, it admits nothing.
    first, _ = send("flow/one")
    second, _ = send("flow/one")
    slots.remember_handed({"id": second.pk, **{f: getattr(second, f) for f in slots.FIELDS}})
    assert claim(first)[0] is not None
    assert claim(second)[0] is None  # the group is full: put back in line
    second.refresh_from_db()
    assert second.status == RunStatus.QUEUED and second.held_by == "concurrency wf:f-one"
    assert slots.handed_hint(second.pk) is None  # a hint serves one claim


def test_keys_are_stored_on_the_run_and_groups_are_per_key():
    run, _ = send("flow/keyed", {"account": "acme"})
    assert (run.slot_1, run.slot_2) == ("wf:f-keyed", "wf:f-keyed:acme")
    other, _ = send("flow/keyed", {"account": 7})
    assert other.slot_2 == "wf:f-keyed:7"
    missing, _ = send("flow/keyed", {})
    assert missing.slot_2 == "wf:f-keyed:"
    assert claim(run)[0] is not None
    assert claim(other)[0] is not None  # another account: room
    same, _ = send("flow/keyed", {"account": "acme"})
    assert claim(same)[0] is None  # acme's one slot is taken
    same.refresh_from_db()
    assert same.held_by == "concurrency wf:f-keyed:acme"


def test_an_expired_lease_frees_its_slot():
    first, _ = send("flow/one")
    second, _ = send("flow/one")
    assert claim(first)[0] is not None
    WorkflowRun.objects.filter(pk=first.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert claim(second)[0] is not None


def test_a_pool_is_shared_by_the_workflows_naming_it():
    runs = [send("flow/pool.a")[0], send("flow/pool.b")[0], send("flow/pool.a")[0]]
    assert {run.slot_1 for run in runs} == {"pool:test-pool"}
    assert claim(runs[0])[0] is not None
    assert claim(runs[1])[0] is not None
    assert claim(runs[2])[0] is None


def test_priority_moves_a_run_ahead_in_line():
    holder, _ = send("flow/priority", {"plan": "free"})
    claimed, token = claim(holder)
    free, _ = send("flow/priority", {"plan": "free"})
    pro, _ = send("flow/priority", {"plan": "pro"})
    assert pro.priority == 120 and free.priority == 0
    assert pro.order_at < free.order_at
    for run in (free, pro):
        assert claim(run)[0] is None
    assert finish(holder, token) == [str(pro.pk)]


def test_a_throttle_spaces_first_starts_and_delays_without_dropping():
    now = timezone.now()
    runs = [send("flow/throttled", {"key": "k"})[0] for _ in range(3)]
    assert claim(runs[0])[0] is not None
    assert claim(runs[1])[0] is None
    held = WorkflowRun.objects.get(pk=runs[1].pk)
    assert held.status == RunStatus.QUEUED and held.held_by == "throttle f-throttled:k"
    # 2 per 2 s: one second apart, with a wake-up at the reserved start.
    assert timedelta(seconds=0.9) < held.throttle_at - now < timedelta(seconds=1.5)
    assert held.wake_at == held.throttle_at == held.due_at
    assert claim(runs[2])[0] is None
    third = WorkflowRun.objects.get(pk=runs[2].pk)
    assert timedelta(seconds=0.9) < third.throttle_at - held.throttle_at < timedelta(seconds=1.1)
    assert ThrottleState.objects.get(key="f-throttled:k")
    # Another key is not held back.
    assert claim(send("flow/throttled", {"key": "other"})[0])[0] is not None
    # Once the reserved time comes, the run starts without asking the throttle again.
    WorkflowRun.objects.filter(pk=held.pk).update(
        throttle_at=timezone.now(), wake_at=timezone.now()
    )
    assert claim(held)[0] is not None


def test_drain_runs_limited_and_throttled_workflows_to_the_end():
    for _ in range(3):
        send("flow/one", {"seconds": 0})
        send("flow/throttled", {"key": "k", "seconds": 0})
    drain(skip_time=True)
    assert set(WorkflowRun.objects.values_list("status", flat=True)) == {RunStatus.COMPLETED}


def test_show_run_and_the_admin_page_say_what_holds_a_queued_run(admin_client):
    holder, _ = send("flow/keyed", {"account": "acme"})
    assert claim(holder)[0] is not None
    held, _ = send("flow/keyed", {"account": "acme"})
    assert claim(held)[0] is None
    out = io.StringIO()
    call_command("show_run", str(held.pk), stdout=out)
    text = out.getvalue()
    assert "Flow      concurrency group wf:f-keyed (limit 3, 1 running)" in text
    assert "Flow      concurrency group wf:f-keyed:acme (limit 1, 1 running)" in text
    assert "Flow      held: waiting for a slot of wf:f-keyed:acme" in text
    page = admin_client.get(reverse("admin:workflows_workflowrun_change", args=[held.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "waiting for a slot of wf:f-keyed:acme" in html
    assert "concurrency group wf:f-keyed:acme (limit 1, 1 running)" in html


def test_show_run_says_until_when_a_throttle_holds_a_run():
    runs = [send("flow/throttled", {"key": "k"})[0] for _ in range(2)]
    claim(runs[0])
    claim(runs[1])
    runs[1].refresh_from_db()
    out = io.StringIO()
    call_command("show_run", str(runs[1].pk), stdout=out)
    assert f"Flow      held: throttled until {runs[1].wake_at:%Y-%m-%d %H:%M:%S}" in out.getvalue()
    assert "Flow      throttle key f-throttled:k" in out.getvalue()


def test_a_pool_with_two_limits_is_a_warning_of_the_system_checks():
    from workflows import checks, registry

    workflow(
        id="f-pool-odd", trigger="flow/pool.odd", concurrency={"limit": 5, "pool": "test-pool"}
    )(lambda ctx: None)
    try:
        (warning,) = [m for m in checks.check_flow_control() if m.id == "workflows.W010"]
        assert "'test-pool' has different limits: 2 by f-pool-a, f-pool-b; 5 by f-pool-odd" in (
            warning.msg
        )
    finally:
        registry.unregister("f-pool-odd")
    assert not [m for m in checks.check_flow_control() if m.id == "workflows.W010"]
