"""workflows.testing as a host project uses it: drain(), no_broker() and the pytest fixtures."""

import pytest
from django.test import TestCase, TransactionTestCase

import eventbus
from workflows import doorbell, testing
from workflows.models import RunStatus, WorkflowRun


@pytest.fixture(autouse=True)
def _no_real_bells(monkeypatch):
    """Fail the test if anything would publish a real broker message."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a real broker message was sent: {args}")

    monkeypatch.setattr(doorbell.current_app, "send_task", refuse)


@pytest.mark.django_db
def test_the_drain_fixture_runs_a_workflow_to_its_end_without_a_broker(
    workflows_drain, workflows_no_broker
):
    event_id = eventbus.send("test/steps", {"steps": 2, "sleep": 3600})
    run = WorkflowRun.objects.get(event_id=event_id)
    assert workflows_drain(skip_time=True) >= 2  # the sleep of an hour, brought forward
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_the_no_broker_fixture_in_a_transactional_test(workflows_no_broker):
    eventbus.send("test/steps", {"steps": 1})
    assert len(workflows_no_broker) == 1
    assert testing.drain() == 1
    assert WorkflowRun.objects.get().status == RunStatus.COMPLETED


class DrainInATestCase(TestCase):
    """As the README shows it, inside Django's TestCase transaction."""

    def test_a_run_completes(self):
        with testing.no_broker():
            eventbus.send("test/steps", {"steps": 2, "sleep": 60})
        testing.drain(skip_time=True)
        self.assertEqual(WorkflowRun.objects.get().status, RunStatus.COMPLETED)


class DrainInATransactionTestCase(TransactionTestCase):
    def test_a_run_completes(self):
        with testing.no_broker() as rung:
            eventbus.send("test/steps", {"steps": 1})
        self.assertEqual(len(rung), 1)
        testing.drain()
        self.assertEqual(WorkflowRun.objects.get().status, RunStatus.COMPLETED)


def test_no_broker_blocks_of_threads_that_interleave_leave_the_broker_as_it_was():
    """Thread A enters, B enters, A leaves, B leaves: bells must reach the broker again."""
    import threading

    from workflows import doorbell
    from workflows.testing import no_broker

    entered, a_left = threading.Barrier(2), threading.Event()

    def a() -> None:
        with no_broker():
            entered.wait(timeout=10)
        a_left.set()

    def b() -> None:
        with no_broker() as rung:
            entered.wait(timeout=10)
            a_left.wait(timeout=10)
            doorbell.ring(["00000000-0000-0000-0000-000000000001"])
            assert rung == ["00000000-0000-0000-0000-000000000001"]

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert doorbell._override is None
