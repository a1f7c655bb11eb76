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

from tests.conftest import purge_test_queue
from workflows import conf, doorbell


@pytest.fixture(autouse=True)
def _the_projects_broker(caplog):
    """Ring through the project's Celery app, and say why if a ring did not publish."""
    from settings.celery import app

    assert doorbell._override is None, "a bell override was left behind by another test"
    app.set_current()
    yield
    failed = [r.getMessage() for r in caplog.records if r.name == "workflows.doorbell"]
    assert not failed, failed


def published(last: str) -> list:
    """Every message now in this session's queue, taken off it (no worker is running).

    Polls until the message of run ``last`` (rung last) has come, however busy the
    machine, then takes whatever else is there.
    """
    from settings.celery import app

    messages = []
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(app.conf.task_default_queue, no_ack=True)
        try:
            deadline = time.monotonic() + 60
            while not any(m.decode()[0] == [last] for m in messages):
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
