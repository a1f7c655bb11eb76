"""The round trips of ``send`` → first step (issue 18, point 2), counted, never timed.

A ``send`` into the default workspace reads the workspace once per process (it is
remembered), and a run's first claim on PostgreSQL says that the run never started, so
its execution reads no memo. Each test also shows the rule that keeps the shortcut
safe: a changed or rolled-back workspace is read again, and a replay, whose first claim
is also its first start, still reads the memos copied into it.
"""

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import eventbus
from eventbus import bus
from eventbus.models import Event, Workspace
from tests.testapp.models import LedgerEntry
from workflows import engine, services
from workflows.models import RunStatus, StepResult, WorkflowRun
from workflows.testing import no_broker

pytestmark = pytest.mark.django_db(transaction=True)


def workspace_reads(queries: CaptureQueriesContext) -> int:
    return sum(1 for q in queries if 'FROM "eventbus_workspace"' in q["sql"])


def memo_reads(queries: CaptureQueriesContext) -> int:
    return sum(
        1
        for q in queries
        if q["sql"].startswith("SELECT") and 'FROM "workflows_stepresult"' in q["sql"]
    )


def sent() -> CaptureQueriesContext:
    """The queries of one ``send`` outside any transaction (as a web view without
    ``ATOMIC_REQUESTS`` or a script sends)."""
    with no_broker(), CaptureQueriesContext(connection) as queries:
        eventbus.send("test/nothing")
    return queries


def test_the_default_workspace_is_read_once_then_remembered():
    bus.forget_workspaces()
    assert workspace_reads(sent()) == 1
    for _ in range(3):
        assert workspace_reads(sent()) == 0
    assert Event.objects.filter(name="test/nothing").values("workspace").distinct().count() == 1


def test_a_changed_or_deleted_workspace_is_read_again():
    sent()
    Workspace.objects.create(slug="another")  # any workspace saved: forget
    assert workspace_reads(sent()) == 1
    default = Workspace.objects.get(slug="default")
    Event.objects.all().delete()
    default.delete()
    queries = sent()  # the default workspace is created again, with a new id
    assert workspace_reads(queries) >= 1
    event = Event.objects.get(name="test/nothing")
    assert event.workspace_id != default.pk and event.workspace.slug == "default"


def test_a_workspace_seen_in_a_rolled_back_transaction_is_not_remembered():
    Event.objects.all().delete()
    Workspace.objects.filter(slug="default").delete()  # forgets; recreated below
    with pytest.raises(RuntimeError), transaction.atomic():
        eventbus.send("test/nothing")  # creates the default workspace, then rolls back
        raise RuntimeError("roll back")
    assert not Workspace.objects.filter(slug="default").exists()
    queries = sent()
    assert workspace_reads(queries) >= 1  # not the rolled-back row
    assert Event.objects.get(name="test/nothing").workspace.slug == "default"


def test_a_send_inside_a_transaction_remembers_the_workspace_once_it_commits():
    bus.forget_workspaces()
    with no_broker(), transaction.atomic():
        eventbus.send("test/nothing")
        with CaptureQueriesContext(connection) as inside:
            eventbus.send("test/nothing")
    assert workspace_reads(inside) == 1  # not yet committed: not yet remembered
    assert workspace_reads(sent()) == 0


postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the claim that reports a first start is PostgreSQL's"
)


@postgresql_only
def test_a_runs_first_execution_reads_no_memo_and_a_resumed_one_reads_them_once():
    with no_broker():
        eventbus.send("test/sleepy", {"seconds": 3600})
    run = WorkflowRun.objects.get(event__name="test/sleepy")
    with CaptureQueriesContext(connection) as first:
        engine.execute(run.pk)
    run.refresh_from_db()
    assert memo_reads(first) == 0 and run.status == RunStatus.SLEEPING, run.status
    # The hour has passed.
    past = timezone.now() - timedelta(seconds=1)
    WorkflowRun.objects.filter(pk=run.pk).update(wake_at=past)
    StepResult.objects.filter(run=run).update(wake_at=past)
    with CaptureQueriesContext(connection) as resumed:
        engine.execute(run.pk)
    run.refresh_from_db()
    assert memo_reads(resumed) == 1 and run.status == RunStatus.COMPLETED, run.error


@postgresql_only
def test_a_replay_reads_the_memos_copied_into_it_and_skips_their_steps():
    with no_broker():
        eventbus.send("test/steps", {"steps": 3})
    original = WorkflowRun.objects.get(event__name="test/steps")
    engine.execute(original.pk)
    original.refresh_from_db()
    assert original.status == RunStatus.COMPLETED
    before = LedgerEntry.objects.count()
    with no_broker():
        replay = services.replay_run(original.pk, from_step="s2")
    with CaptureQueriesContext(connection) as queries:
        engine.execute(replay.pk)
    replay.refresh_from_db()
    assert replay.status == RunStatus.COMPLETED and memo_reads(queries) == 1
    # Only the step replayed from (and those after it) ran again; s0 and s1 were copied.
    assert LedgerEntry.objects.count() - before == 1
    assert StepResult.objects.filter(run=replay).count() == 3
