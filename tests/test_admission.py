"""Admission in-process: rate limits, debounce, batches, singletons, idempotency, the
recorded reasons, and races between threads with their own connections.

Time is moved by a fake clock (``django.utils.timezone.now``), never waited for; the
race tests start their threads on a barrier.
"""

import html
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connections
from django.urls import reverse
from django.utils import timezone

import eventbus
from eventbus.models import Event, EventStatus
from workflows import gates, lifecycle, services
from workflows.models import (
    BatchEvent,
    EventSkip,
    GateState,
    IdempotencyRecord,
    RunStatus,
    SkipReason,
    WorkflowRun,
)
from workflows.testing import drain, no_broker


class Clock:
    """``timezone.now`` under the test's control."""

    def __init__(self) -> None:
        self.now = timezone.now()

    def __call__(self):
        return self.now

    def advance(self, **delta) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(timezone, "now", fake)
    return fake


def runs(workflow_id: str, **filters):
    return WorkflowRun.objects.filter(workflow_id=workflow_id, parent__isnull=True, **filters)


def reasons(workflow_id: str) -> list[str]:
    return list(
        EventSkip.objects.filter(workflow_id=workflow_id)
        .order_by("created_at", "pk")
        .values_list("reason", flat=True)
    )


def send(name, data, **kwargs):
    with no_broker():
        return eventbus.send(name, data, **kwargs)


# --- rate limit ------------------------------------------------------------------------
@pytest.mark.django_db
def test_rate_limit_is_a_sliding_window_per_key_and_other_workflows_still_get_the_event(clock):
    first = send("adm/import", {"user": "u1"})
    clock.advance(minutes=40)
    send("adm/import", {"user": "u1"})
    refused = send("adm/import", {"user": "u1"})  # a third within the hour
    send("adm/import", {"user": "u2"})  # another key has its own window
    assert runs("adm-rate").count() == 3
    assert reasons("adm-rate") == [SkipReason.RATE_LIMITED]
    assert EventSkip.objects.get(workflow_id="adm-rate").event_id.hex == refused.replace("-", "")
    assert runs("adm-plain").count() == 4  # the event is stored and delivered elsewhere
    clock.advance(minutes=21)  # 61 min after the first: it left the window, the 2nd not
    send("adm/import", {"user": "u1"})
    send("adm/import", {"user": "u1"})
    assert runs("adm-rate", event__data__user="u1").count() == 3
    assert reasons("adm-rate") == [SkipReason.RATE_LIMITED] * 2
    assert runs("adm-rate", event_id=first).exists()


# --- debounce --------------------------------------------------------------------------
@pytest.mark.django_db
def test_debounce_starts_one_run_period_after_the_last_event_with_the_last_event(clock):
    start = clock.now
    ids = []
    for n in range(3):
        ids.append(send("adm/typed", {"user": "u1", "n": n}))
        clock.advance(milliseconds=500)
    assert not runs("adm-debounce").exists()  # no run row while events are collected
    state = GateState.objects.get(kind="debounce")
    assert state.event_id.hex == ids[-1].replace("-", "")
    assert state.due_at == start + timedelta(milliseconds=1000 + 1000)  # last + period
    assert gates.fire_due(10, now=start + timedelta(milliseconds=1999)) == 0
    assert gates.fire_due(10, now=start + timedelta(milliseconds=2000)) == 1
    assert gates.fire_due(10, now=start + timedelta(seconds=10)) == 0  # fired once
    (run,) = runs("adm-debounce")
    assert str(run.event_id) == ids[-1]
    assert reasons("adm-debounce") == [SkipReason.DEBOUNCED] * 2
    drain()
    run.refresh_from_db()
    assert run.output == {"last": 2, "events": [ids[-1]]}
    # A new event after the run was created starts a new debounce.
    later = send("adm/typed", {"user": "u1", "n": 9})
    drain(skip_time=True)
    assert runs("adm-debounce").count() == 2
    assert runs("adm-debounce", event_id=later).get().output["last"] == 9


@pytest.mark.django_db
def test_debounce_timeout_caps_how_long_the_run_is_pushed_back(clock):
    start = clock.now
    for n in range(6):  # every 0.8 s: each one alone would push the run 1 s further
        send("adm/typed", {"user": "u2", "n": n})
        clock.advance(milliseconds=800)
    state = GateState.objects.get(kind="debounce")
    assert state.due_at == start + timedelta(seconds=4)  # timeout after the first event
    gates.fire_due(10, now=start + timedelta(seconds=4))
    assert runs("adm-debounce").get().event.data["n"] == 5


@pytest.mark.django_db
def test_debounce_keys_are_separate():
    for user in ("a", "b", "a", "b", "c"):
        send("adm/typed", {"user": user})
    drain(skip_time=True)
    assert runs("adm-debounce").count() == 3


# --- batches ---------------------------------------------------------------------------
@pytest.mark.django_db
def test_batches_fire_at_max_size_in_the_senders_transaction_and_on_timeout(clock):
    with no_broker():
        ids = eventbus.send_batch(
            [{"name": "adm/row", "data": {"table": "A", "i": i}} for i in range(12)]
            + [{"name": "adm/row", "data": {"table": "B", "i": i}} for i in range(2)]
        )
    full = runs("adm-batch").values_list("event_id", flat=True)  # created at one frozen instant
    assert sorted(str(pk) for pk in full) == sorted([ids[0], ids[5]])  # two full batches of A
    assert gates.fire_due(10, now=clock.now + timedelta(milliseconds=999)) == 0
    assert gates.fire_due(10, now=clock.now + timedelta(seconds=1)) == 2  # rest of A, and B
    assert runs("adm-batch").count() == 4
    members = list(BatchEvent.objects.values_list("event_id", flat=True))
    assert sorted(str(m) for m in members) == sorted(ids)  # every event in exactly one batch
    drain(skip_time=True)
    outputs = {str(run.event_id): run.output for run in runs("adm-batch")}
    assert outputs[ids[0]]["events"] == ids[0:5]
    assert outputs[ids[5]]["events"] == ids[5:10]
    assert outputs[ids[10]]["events"] == ids[10:12]
    assert outputs[ids[12]]["events"] == ids[12:14]
    for output in outputs.values():
        assert output["before"] == output["events"]  # the same list after resuming
        assert output["first"] == output["events"][0]
    assert runs("adm-plain").count() == 14


@pytest.mark.django_db
def test_replaying_a_batch_run_replays_all_of_its_events():
    with no_broker():
        ids = eventbus.send_batch([{"name": "adm/row", "data": {"table": "R"}} for _ in range(5)])
    drain(skip_time=True)
    original = runs("adm-batch").get()
    with no_broker():
        replay = services.replay_run(original.pk)
    drain(skip_time=True)
    replay.refresh_from_db()
    assert replay.status == RunStatus.COMPLETED
    assert replay.output["events"] == ids


@pytest.mark.django_db
def test_a_run_without_batching_has_ctx_events_of_its_one_event():
    event_id = send("adm/typed", {"user": "solo"})
    drain(skip_time=True)
    assert runs("adm-debounce").get().output["events"] == [event_id]


# --- singleton -------------------------------------------------------------------------
@pytest.mark.django_db
def test_singleton_skip_creates_no_run_while_one_is_active_for_the_key():
    first = send("adm/bill", {"account": "a1", "n": 1})
    drain()
    skipped = send("adm/bill", {"account": "a1", "n": 2})
    send("adm/bill", {"account": "a2", "n": 3})
    assert runs("adm-single-skip").count() == 2
    skip = EventSkip.objects.get(workflow_id="adm-single-skip")
    assert (str(skip.event_id), skip.reason) == (skipped, SkipReason.SINGLETON)
    send("adm/release", {"account": "a1"})
    drain()
    assert runs("adm-single-skip", event_id=first).get().status == RunStatus.COMPLETED
    send("adm/bill", {"account": "a1", "n": 4})  # no active run any more
    assert runs("adm-single-skip", event__data__account="a1").count() == 2


@pytest.mark.django_db
def test_singleton_cancel_cancels_the_active_run_with_its_deferred_events():
    first = send("adm/sync", {"account": "a1", "n": 1})
    drain()
    old = runs("adm-single-cancel", event_id=first).get()
    assert old.status == RunStatus.WAITING
    deferred = Event.objects.get(source_run_id=old.pk)
    assert deferred.status == EventStatus.SCHEDULED
    second = send("adm/sync", {"account": "a1", "n": 2})
    old.refresh_from_db()
    deferred.refresh_from_db()
    assert old.status == RunStatus.CANCELLED
    assert "singleton" in old.error["message"]
    assert deferred.status == EventStatus.CANCELLED
    new = runs("adm-single-cancel", event_id=second).get()
    assert new.status == RunStatus.QUEUED


# --- idempotency -----------------------------------------------------------------------
@pytest.mark.django_db
def test_idempotency_dedupes_per_workflow_for_the_window(clock, settings):
    settings.WORKFLOWS = {**settings.WORKFLOWS, "IDEMPOTENCY_WINDOW_SECONDS": 3600}
    send("adm/order", {"orderId": "o1"})
    duplicate = send("adm/order", {"orderId": "o1"})
    send("adm/order", {"orderId": "o2"})
    assert runs("adm-idem").count() == 2
    skip = EventSkip.objects.get(workflow_id="adm-idem")
    assert (str(skip.event_id), skip.reason) == (duplicate, SkipReason.IDEMPOTENT)
    assert runs("adm-plain").count() == 3
    record = IdempotencyRecord.objects.get(key="o1")
    assert record.expires_at == clock.now + timedelta(hours=1)
    clock.advance(minutes=59)
    send("adm/order", {"orderId": "o1"})
    assert runs("adm-idem").count() == 2
    clock.advance(minutes=2)  # past the window: the value is free again
    send("adm/order", {"orderId": "o1"})
    assert runs("adm-idem").count() == 3
    assert gates.purge_idempotency(100, now=clock.now + timedelta(hours=2)) == 2


@pytest.mark.django_db
def test_an_idempotency_expression_that_fails_means_no_deduplication():
    send("adm/order", {"other": 1})
    send("adm/order", {"other": 1})
    assert runs("adm-idem").count() == 2


@pytest.mark.django_db
def test_duplicates_in_one_batch_of_events_start_one_run():
    with no_broker():
        eventbus.send_batch([{"name": "adm/order", "data": {"orderId": "same"}}] * 3)
    assert runs("adm-idem").count() == 1
    assert reasons("adm-idem") == [SkipReason.IDEMPOTENT] * 2


# --- why an event created no run -------------------------------------------------------
@pytest.mark.django_db
def test_show_event_and_the_admin_page_say_why_an_event_created_no_run(admin_client):
    send("adm/import", {"user": "x"})
    send("adm/import", {"user": "x"})
    limited = send("adm/import", {"user": "x"})
    superseded = send("adm/typed", {"user": "x"})
    pending = send("adm/typed", {"user": "x"})
    with no_broker():
        batch = eventbus.send_batch([{"name": "adm/row", "data": {"table": "S"}}] * 2)
    expected = {
        limited: ["adm-rate", "over the workflow's rate limit", "adm-plain  run "],
        superseded: ["debounced: a later event took its place", f"superseded by event {pending}"],
        pending: ["no run yet: debounce pending"],
        batch[1]: ["no run yet: batched, event 2 of batch", "still collecting (2 so far)"],
    }
    for event_id, parts in expected.items():
        out = StringIO()
        call_command("show_event", event_id, stdout=out)
        for part in parts:
            assert part in out.getvalue(), out.getvalue()
        page = admin_client.get(reverse("admin:eventbus_event_change", args=[event_id]))
        assert parts[-1 if event_id != limited else 1] in html.unescape(page.content.decode())
    drain(skip_time=True)
    out = StringIO()
    call_command("show_event", batch[1], stdout=out)
    run = runs("adm-batch").get()
    assert "batched: event 2 of batch" in out.getvalue()
    assert f"run {run.pk} (completed)" in out.getvalue()


# --- races: threads with their own connections -----------------------------------------
def race(count: int, act) -> list[BaseException]:
    """Run ``act(i)`` in ``count`` threads released together; return their errors."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def body(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            with no_broker():
                act(index)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


@pytest.mark.django_db(transaction=True)
def test_racing_sends_for_one_singleton_key_create_one_run():
    # The key's row exists already (its run ended): the race is on the row, not its insert.
    first = send("adm/bill", {"account": "race", "n": -1})
    lifecycle.cancel(runs("adm-single-skip", event_id=first).get().pk)
    assert not race(6, lambda i: eventbus.send("adm/bill", {"account": "race", "n": i}))
    assert runs("adm-single-skip", status=RunStatus.QUEUED).count() == 1
    assert reasons("adm-single-skip") == [SkipReason.SINGLETON] * 5


@pytest.mark.django_db(transaction=True)
def test_racing_sends_never_exceed_the_rate_limit():
    assert not race(6, lambda i: eventbus.send("adm/import", {"user": "race"}))
    assert runs("adm-rate").count() == 2
    assert runs("adm-plain").count() == 6


@pytest.mark.django_db(transaction=True)
def test_racing_sends_of_one_idempotency_value_create_one_run():
    assert not race(6, lambda i: eventbus.send("adm/order", {"orderId": "race"}))
    assert runs("adm-idem").count() == 1


@pytest.mark.django_db(transaction=True)
def test_racing_senders_put_every_event_in_exactly_one_batch():
    assert not race(
        6,
        lambda i: eventbus.send_batch([{"name": "adm/row", "data": {"table": "T", "i": i}}] * 4),
    )
    assert runs("adm-batch").count() == 4  # 24 events, batches of 5: 4 full ones
    assert BatchEvent.objects.count() == 24
    sizes = sorted(GateState.objects.filter(kind="batch").values_list("size", flat=True))
    assert sizes == [4]


@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_never_fire_one_debounce_or_batch_twice():
    with no_broker():
        for user in range(20):
            eventbus.send("adm/typed", {"user": f"u{user}"})
            eventbus.send("adm/row", {"table": f"t{user}"})
    later = timezone.now() + timedelta(seconds=10)
    taken: list[int] = []
    assert not race(4, lambda i: taken.append(gates.fire_due(3, now=later) + _rest(later)))
    assert runs("adm-debounce").count() == 20
    assert runs("adm-batch").count() == 20
    assert sum(taken) == 40


def _rest(now) -> int:
    fired = 0
    while GateState.objects.filter(due_at__isnull=False).exists():
        fired += gates.fire_due(3, now=now)
    return fired


# --- the key fast path ------------------------------------------------------------------
EVENT = {
    "id": "e1",
    "name": "adm/x",
    "ts": 5,
    "data": {"i": 1, "f": 1.0, "b": True, "s": "x", "n": None, "d": {"z": [1, {"q": 2}]}},
}


@pytest.mark.parametrize(
    "source",
    [
        "event.data.i",
        "event.data.f",
        "event.data.b",
        "event.data.s",
        "event.data.n",
        "event.data.d",
        "event.data.d.z",
        "event.name",
        "event.ts",
        "event.id",
        "workspace",
        "event.data.missing",
        "event.data.s.x",
    ],
)
def test_plain_field_paths_give_the_key_cel_gives(source, monkeypatch):
    from workflows import expressions

    expression = expressions.compile(source, "test")
    assert expressions._path(source) is not None  # takes the fast path

    def key_of() -> str:
        try:
            return expressions.as_key(expression.evaluate(EVENT, "ws"))
        except expressions.EvaluationError:
            return "<error>"

    fast = key_of()
    monkeypatch.setattr(expressions, "_path", lambda source: None)  # CEL itself
    assert fast == key_of()


@pytest.mark.django_db
def test_purge_runs_deletes_expired_idempotency_values_only(clock):
    from workflows import retention

    send("adm/order", {"orderId": "old"})
    clock.advance(hours=25)
    send("adm/order", {"orderId": "new"})
    list(retention.purge_runs(365))
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["new"]
