"""The doorbell's eta horizon, on the real broker: what a wake-up publishes, and when.

Only a wake-up within ``ETA_HORIZON_SECONDS`` is published with a Celery ``eta``; one
further ahead publishes nothing (the dispatcher rings it when it is due), so no broker
is asked to hold a message past its limits (Redis ``visibility_timeout``, RabbitMQ
``consumer_timeout``). ``no_broker()`` returns before this rule, so these tests ring
the broker of the configuration under test and read its queue back. The real-worker
sleep past the horizon is ``tests/test_worker.py::test_sleeping_run_holds_no_worker_and_resumes``.
"""

import contextlib
import time
import uuid
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

import eventbus
from eventbus import bus
from eventbus.models import Event, EventStatus
from tests.conftest import purge_test_queue, wait_until
from workflows import conf, dispatcher, doorbell, tasks
from workflows.models import RunStatus, WorkflowRun


@pytest.fixture(autouse=True)
def _the_projects_broker(caplog):
    """Ring through the project's Celery app, and say why if a ring did not publish."""
    from settings.celery import app

    assert doorbell._override is None, "a bell override was left behind by another test"
    app.set_current()
    yield
    failed = [r.getMessage() for r in caplog.records if r.name == "workflows.doorbell"]
    assert not failed, failed


def ids_in(message) -> list[str]:
    """The run ids of an ``execute_run(s)`` message, the event ids of an ``emit_events``."""
    (first,) = message.decode()[0]
    return first if isinstance(first, list) else [first]


def published(last: str) -> list:
    """Every message now in this session's queue, taken off it (no worker is running).

    Polls until the message naming ``last`` (the run or event rung last) has come,
    however busy the machine, then takes whatever else is there.
    """
    from settings.celery import app

    messages = []
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(app.conf.task_default_queue, no_ack=True)
        try:
            deadline = time.monotonic() + 60
            while not any(last in ids_in(m) for m in messages):
                assert time.monotonic() < deadline, f"no message for {last} within 60 s"
                with contextlib.suppress(queue.Empty):
                    messages.append(queue.get(timeout=5))
            while True:
                try:
                    messages.append(queue.get(timeout=1))
                except queue.Empty:
                    return messages
        finally:
            queue.close()


def test_a_far_wake_up_publishes_nothing_and_a_near_one_publishes_with_its_eta():
    purge_test_queue()
    horizon = timedelta(seconds=conf.get().ETA_HORIZON_SECONDS)
    far, near = str(uuid.uuid4()), str(uuid.uuid4())
    doorbell.ring([far], at=timezone.now() + horizon + timedelta(seconds=5))
    near_at = timezone.now() + horizon / 2
    doorbell.ring([near], at=near_at)
    messages = published(last=near)
    assert [message.headers["task"] for message in messages] == [doorbell.EXECUTE_RUN]
    (message,) = messages
    args, _kwargs, _embed = message.decode()
    assert args == [near]  # the far run was not published at all
    assert datetime.fromisoformat(message.headers["eta"]) == near_at


def test_a_wake_up_now_or_past_publishes_without_an_eta():
    purge_test_queue()
    run_id = str(uuid.uuid4())
    doorbell.ring([run_id], at=timezone.now() - timedelta(seconds=1))
    (message,) = published(last=run_id)
    assert message.decode()[0] == [run_id] and message.headers.get("eta") is None


def eta_of(message) -> datetime:
    return datetime.fromisoformat(message.headers["eta"])


@pytest.mark.django_db(transaction=True)
def test_deferred_events_are_timed_for_their_ts_once_they_come_within_the_horizon():
    purge_test_queue()
    horizon_ms = int(conf.get().ETA_HORIZON_SECONDS * 1000)
    at_send_ms = doorbell.EventTimer().at_send_ms()
    far_ts = bus.now_ms() + horizon_ms + 1500
    far = eventbus.send("doorbell/far", {}, ts=far_ts)
    middle_ts = bus.now_ms() + (at_send_ms + horizon_ms) // 2
    middle = eventbus.send("doorbell/middle", {}, ts=middle_ts)
    near_ts = bus.now_ms() + at_send_ms // 2
    near = eventbus.send("doorbell/near", {}, ts=near_ts)
    # Only the near one is timed at once: a dispatcher pass arms the others.
    (message,) = published(last=near)
    assert message.headers["task"] == doorbell.EMIT_EVENTS and ids_in(message) == [near]
    assert eta_of(message).timestamp() * 1000 == near_ts
    assert [Event.objects.get(pk=pk).armed for pk in (near, middle, far)] == [True, False, False]
    dispatcher.tick()
    (message,) = published(last=middle)
    assert ids_in(message) == [middle] and eta_of(message).timestamp() * 1000 == middle_ts
    assert not Event.objects.get(pk=far).armed
    wait_until(lambda: bus.now_ms() + horizon_ms >= far_ts, timeout=10, what="the far ts")
    dispatcher.tick()
    (message,) = published(last=far)
    assert ids_in(message) == [far] and eta_of(message).timestamp() * 1000 == far_ts
    assert Event.objects.get(pk=far).armed and Event.objects.get(pk=far).status == "scheduled"
    assert bus.arm_due() == 0  # armed once, by whichever pass came first


@pytest.mark.django_db(transaction=True)
def test_events_due_in_the_same_second_share_one_pending_message():
    purge_test_queue()
    base = (bus.now_ms() // 1000 + 3) * 1000  # the start of a second, 2-3 s ahead
    ids = eventbus.send_batch(
        [{"name": "doorbell/bucket", "ts": base + offset} for offset in (900, 0, 450)]
        + [{"name": "doorbell/bucket", "ts": base + 1200}]
    )
    dispatcher.tick()
    messages = published(last=ids[3])
    assert sorted((eta_of(m).timestamp() * 1000, ids_in(m)) for m in messages) == [
        (base, [ids[1], ids[2], ids[0]]),
        (base + 1200, [ids[3]]),
    ]


@pytest.mark.django_db(transaction=True)
def test_a_timed_message_emits_its_events_once_and_times_an_early_one_again():
    purge_test_queue()
    soon = bus.now_ms() + 1500  # not armed at send: nothing is published
    later = bus.now_ms() + 8000
    first, second = eventbus.send_batch(
        [{"name": "doorbell/soon", "ts": soon}, {"name": "doorbell/later", "ts": later}]
    )
    wait_until(lambda: bus.now_ms() >= soon, timeout=10, what="the first ts")
    # One message for both, as if delivered early for the second.
    assert tasks.emit_events([first, second]) == 1
    assert Event.objects.get(pk=first).status == EventStatus.EMITTED
    assert Event.objects.get(pk=second).status == EventStatus.SCHEDULED
    (message,) = published(last=second)  # the early one is timed again, for its ts
    assert ids_in(message) == [second] and eta_of(message).timestamp() * 1000 == later
    # A repeated message, or the dispatcher after it, emits nothing again.
    emitted_at = Event.objects.get(pk=first).emitted_at
    assert tasks.emit_events([first]) == 0
    assert bus.emit_due() == 0
    assert Event.objects.get(pk=first).emitted_at == emitted_at


@pytest.mark.django_db(transaction=True)
def test_an_armed_event_whose_message_was_lost_is_emitted_by_the_dispatcher():
    purge_test_queue()
    ts = bus.now_ms() + 4000  # reading the queue back takes a second or more
    event_id = eventbus.send("doorbell/lost", {}, ts=ts)
    assert dispatcher.tick()["emitted"] == 0  # armed, not due yet
    published(last=event_id)  # its message, taken off the queue: lost
    assert Event.objects.get(pk=event_id).armed
    wait_until(lambda: bus.now_ms() >= ts, timeout=10, what="the ts")
    assert dispatcher.tick()["emitted"] == 1
    assert Event.objects.get(pk=event_id).status == EventStatus.EMITTED


@pytest.mark.django_db(transaction=True)
def test_a_far_wake_up_is_rung_with_its_eta_by_the_pass_that_nears_it():
    from tests.conftest import start_run

    purge_test_queue()
    horizon = timedelta(seconds=conf.get().ETA_HORIZON_SECONDS)
    run = start_run("test/steps", {"steps": 1})
    wake = timezone.now() + horizon + timedelta(seconds=1.5)
    WorkflowRun.objects.filter(pk=run.pk).update(
        status=RunStatus.SLEEPING, wake_at=wake, due_at=wake
    )
    assert dispatcher.tick()["rung"] == 0  # not within the horizon yet
    wait_until(lambda: timezone.now() + horizon >= wake, timeout=10, what="the horizon")
    assert dispatcher.tick()["rung"] == 1
    (message,) = published(last=str(run.pk))
    assert eta_of(message) == wake
    timeout = timedelta(seconds=conf.get().RING_TIMEOUT_SECONDS)
    assert WorkflowRun.objects.get(pk=run.pk).due_at == wake + timeout
    assert dispatcher.tick()["rung"] == 0  # rung once: the next bell is the backstop


@pytest.mark.django_db(transaction=True)
def test_the_emitting_task_executes_the_runs_its_events_start_up_to_a_batch():
    purge_test_queue()
    batch = conf.get().RING_BATCH_SIZE
    ts = bus.now_ms() + 1500  # not armed at send: nothing is published
    ids = eventbus.send_batch(
        [{"name": "test/steps", "data": {"steps": 1}, "ts": ts} for _ in range(batch + 3)]
    )
    wait_until(lambda: bus.now_ms() >= ts, timeout=10, what="the ts")
    assert tasks.emit_events(ids) == batch + 3
    runs = WorkflowRun.objects.filter(event_id__in=ids)
    done = set(runs.filter(status=RunStatus.COMPLETED).values_list("pk", flat=True))
    queued = {str(pk) for pk in runs.filter(status=RunStatus.QUEUED).values_list("pk", flat=True)}
    # The first batch ran here, without a message; the rest were rung as usual.
    assert len(done) == batch and len(queued) == 3
    rung = [run_id for message in published(last=sorted(queued)[-1]) for run_id in ids_in(message)]
    assert sorted(rung) == sorted(queued)


@pytest.mark.django_db(transaction=True)
def test_a_debounce_timer_is_timed_and_its_message_chases_it_when_it_moves():
    from workflows.models import GateState

    purge_test_queue()
    first = eventbus.send("adm/typed", {"user": "ann", "n": 1})  # adm-debounce: 1 s
    (gate,) = GateState.objects.filter(event_id=first)
    (message,) = published(last=gate.pk)  # timed when the timer started
    assert message.headers["task"] == doorbell.FIRE_GATES and ids_in(message) == [gate.pk]
    assert eta_of(message) == gate.due_at
    second = eventbus.send("adm/typed", {"user": "ann", "n": 2})  # moves the timer
    moved = GateState.objects.get(pk=gate.pk)
    assert moved.event_id != first and moved.due_at > gate.due_at
    wait_until(lambda: timezone.now() >= gate.due_at, timeout=10, what="the first due time")
    # The first message comes before the moved timer: it fires nothing, and times one
    # message for the new due time (the second send timed none: its timer had started).
    assert tasks.fire_gates([gate.pk]) == 0
    (again,) = published(last=gate.pk)
    assert eta_of(again) == moved.due_at
    wait_until(lambda: timezone.now() >= moved.due_at, timeout=10, what="the moved due time")
    assert tasks.fire_gates([gate.pk]) == 1
    run = WorkflowRun.objects.get(workflow_id="adm-debounce")
    assert str(run.event_id) == second
    assert tasks.fire_gates([gate.pk]) == 0  # a repeated message fires nothing again
    assert WorkflowRun.objects.filter(workflow_id="adm-debounce").count() == 1
