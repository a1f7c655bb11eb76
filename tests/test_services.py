"""The console's service functions: replay, replay from a step, replay event, cancel, purge."""

from datetime import timedelta

import pytest
from django.utils import timezone

import eventbus
from eventbus.models import Event
from tests import admin_workflows, conftest
from workflows import retention, services, testing
from workflows.exceptions import (
    MalformedIdError,
    UnknownRunError,
    UnknownStepError,
    WrongWorkspaceError,
)
from workflows.models import RunStatus, StepResult, StepStatus, WorkflowRun

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _reset():
    yield from admin_workflows.fresh_state()


def failed_flaky_run() -> WorkflowRun:
    """A run of ``adm-flaky`` that failed at its ``charge`` step."""
    return conftest.failed_run(order=7)


def snapshot(run: WorkflowRun) -> tuple:
    run.refresh_from_db()
    steps = list(run.steps.order_by("position").values_list("key", "status", "output", "attempt"))
    return (run.status, run.output, run.error, run.finished_at, steps)


def test_replay_from_start_is_a_new_linked_run_and_leaves_the_original():
    original = failed_flaky_run()
    before = snapshot(original)
    admin_workflows.FLAKY["fail"] = False
    admin_workflows.CALLS.clear()

    replay = services.replay_run(original.pk)

    assert replay.pk != original.pk
    assert replay.replay_of_id == original.pk
    assert (replay.workflow_id, replay.event_id, replay.workspace_id) == (
        original.workflow_id,
        original.event_id,
        original.workspace_id,
    )
    assert replay.status == RunStatus.QUEUED and replay.steps.count() == 0
    testing.drain(skip_time=True)
    replay.refresh_from_db()
    assert replay.status == RunStatus.COMPLETED
    assert admin_workflows.CALLS == ["prepare", "reserve", "charge", "notify"]
    assert snapshot(original) == before


def test_replay_from_a_step_keeps_the_completed_memos_before_it():
    original = failed_flaky_run()
    before = snapshot(original)
    admin_workflows.FLAKY["fail"] = False
    admin_workflows.CALLS.clear()

    replay = services.replay_run(str(original.pk), from_step="charge")

    copied = list(replay.steps.order_by("position"))
    originals = {s.key: s for s in original.steps.all()}
    assert [s.step_id for s in copied] == ["prepare", "reserve"]
    for step in copied:
        source = originals[step.key]
        assert (step.step_id, step.kind, step.output, step.position) == (
            source.step_id,
            source.kind,
            source.output,
            source.position,
        )
        assert step.status == StepStatus.COMPLETED
    testing.drain(skip_time=True)
    replay.refresh_from_db()
    assert replay.status == RunStatus.COMPLETED
    # Only the step replayed from, and what follows it, ran again.
    assert admin_workflows.CALLS == ["charge", "notify"]
    assert snapshot(original) == before


def test_replay_from_a_middle_step_keeps_sleep_and_send_event_memos():
    eventbus.send("adm/steps", {"n": 3})
    testing.drain(skip_time=True)
    original = WorkflowRun.objects.get(workflow_id="adm-steps")
    announced = Event.objects.filter(name="adm/announced").count()
    admin_workflows.CALLS.clear()

    replay = services.replay_run(original.pk, from_step="store")
    testing.drain(skip_time=True)

    replay.refresh_from_db()
    assert replay.status == RunStatus.COMPLETED
    assert admin_workflows.CALLS == ["store"]
    # The send_event memo was copied: the event is not emitted a second time.
    assert Event.objects.filter(name="adm/announced").count() == announced
    assert replay.output == original.output


def test_replay_from_a_repeated_step_by_memo_key():
    eventbus.send("adm/many", {"count": 5})
    testing.drain(skip_time=True)
    original = WorkflowRun.objects.get(workflow_id="adm-many")
    third = original.steps.get(position=3)

    replay = services.replay_run(original.pk, from_step=third.key)

    assert list(replay.steps.values_list("position", flat=True).order_by("position")) == [0, 1, 2]


def test_replay_of_an_active_run_is_allowed():
    eventbus.send("adm/steps", {"n": 1})
    run = WorkflowRun.objects.get(workflow_id="adm-steps")
    assert run.status == RunStatus.QUEUED
    replay = services.replay_run(run.pk)
    assert replay.replay_of_id == run.pk
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED


def test_console_errors_are_value_errors():
    # The bad arguments themselves are cases of tests/test_catalogue.py (API_CASES).
    for error in (MalformedIdError, UnknownRunError, UnknownStepError, WrongWorkspaceError):
        assert issubclass(error, ValueError)


def test_replay_event_starts_one_run_per_subscribed_workflow_linked_to_the_originals():
    event_id = eventbus.send("adm/steps", {"n": 2})
    testing.drain(skip_time=True)
    original = WorkflowRun.objects.get(event_id=event_id)

    runs = services.replay_event(event_id)

    assert [(r.workflow_id, r.replay_of_id) for r in runs] == [("adm-steps", original.pk)]
    testing.drain(skip_time=True)
    assert WorkflowRun.objects.filter(event_id=event_id).count() == 2


def test_cancel_run_cancels_active_runs_only():
    eventbus.send("adm/steps", {"n": 1})
    run = WorkflowRun.objects.get(workflow_id="adm-steps")
    assert services.cancel_run(run.pk) is True
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert services.cancel_run(run.pk) is False


def test_select_runs_and_replay_many():
    for n in range(3):
        eventbus.send("adm/flaky", {"n": n})
    eventbus.send("adm/steps", {"n": 9})
    testing.drain(skip_time=True)
    selection = services.select_runs(
        workflow="adm-flaky", status="failed", since=services.parse_when("2000-01-01")
    )
    assert selection.count() == 3
    outcomes = list(services.replay_many(selection, limit=2))
    assert len(outcomes) == 2 and all(o.replay is not None for o in outcomes)


def test_purge_deletes_old_finished_runs_in_batches_and_keeps_the_rest():
    for n in range(5):
        eventbus.send("adm/flaky", {"n": n})
    eventbus.send("adm/steps", {"n": 1})
    testing.drain(skip_time=True)
    eventbus.send("adm/steps", {"n": 2})  # stays active (queued): never purged
    active = WorkflowRun.objects.filter(status=RunStatus.QUEUED).get()
    old = timezone.now() - timedelta(days=40)
    WorkflowRun.objects.update(created_at=old)

    progress = list(retention.purge_runs(30, ["failed"], batch_size=2))

    assert progress == [2, 4, 5]
    assert not WorkflowRun.objects.filter(status=RunStatus.FAILED).exists()
    assert WorkflowRun.objects.filter(pk=active.pk).exists()
    assert WorkflowRun.objects.filter(status=RunStatus.COMPLETED).count() == 1
    assert not StepResult.objects.filter(run__workflow_id="adm-flaky").exists()
