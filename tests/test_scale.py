"""Flat cost at scale (issue 18, W6): purging in batches, and index-backed hot queries.

The purge test runs everywhere. The plan test needs PostgreSQL (it reads the planner's
``EXPLAIN (FORMAT JSON)``); it fills 20,000 finished runs, their events and steps with
set-based SQL (``bench.scale.fill``), ANALYZEs them, and checks that no hot query
(every admin list and its filters, the run claim, ``take_due``, ``emit_due``, the wait
lookup) reads one of the big tables with a sequential scan, and that the engine's hot
paths read the index meant for them.
"""

import json
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from bench import scale
from eventbus import bus
from eventbus.admin import CappedPaginator
from eventbus.models import Event
from tests.conftest import run_command
from workflows import runstore, runstore_pg
from workflows.models import RunStatus, StepResult, Wait, WorkflowRun

pytestmark = pytest.mark.django_db

BIG_TABLES = {"workflows_workflowrun", "workflows_stepresult", "eventbus_event"}


def _runs(count: int, *, status: str = RunStatus.COMPLETED, age_days: float = 10) -> list:
    """``count`` runs of ``status`` created ``age_days`` ago, one event and two steps each."""
    workspace = bus.get_workspace(None)
    created = timezone.now() - timedelta(days=age_days)
    events = Event.objects.bulk_create(
        Event(workspace=workspace, name="scale/test", ts=0, status="emitted", created_at=created)
        for _ in range(count)
    )
    runs = WorkflowRun.objects.bulk_create(
        WorkflowRun(
            id=uuid.uuid4(),
            workspace=workspace,
            workflow_id="scale-test",
            event=event,
            status=status,
            created_at=created + timedelta(milliseconds=n),
        )
        for n, event in enumerate(events)
    )
    StepResult.objects.bulk_create(
        StepResult(
            run=run,
            step_id=f"s{p}",
            key=f"{run.pk.hex[:30]}{p}",
            position=p,
            kind="run",
            status="completed",
        )
        for run in runs
        for p in range(2)
    )
    return runs


def test_purge_runs_goes_batch_by_batch_and_keeps_what_does_not_match():
    old = _runs(25)
    recent = _runs(1, age_days=0)[0]
    active = _runs(1, status=RunStatus.SLEEPING)[0]
    # A run invoked by a purged run stays, its link emptied; an event a purged run
    # emitted stays, its source forgotten.
    child = _runs(1, age_days=0)[0]
    WorkflowRun.objects.filter(pk=child.pk).update(parent=old[3])
    emitted = Event.objects.filter(pk=recent.event_id).update(source_run_id=old[4].pk)
    assert emitted == 1

    out = run_command("purge_runs", "--older-than", "7", "--batch-size", "10")

    lines = out.splitlines()
    assert lines[:3] == [
        "deleted 10/25 run(s)",
        "deleted 20/25 run(s)",
        "deleted 25/25 run(s)",
    ]
    assert "Purged 25 run(s)." in lines[-1]
    assert not WorkflowRun.objects.filter(pk__in=[r.pk for r in old]).exists()
    assert not StepResult.objects.filter(run_id__in=[r.pk for r in old]).exists()
    left = set(WorkflowRun.objects.values_list("pk", flat=True))
    assert left == {recent.pk, active.pk, child.pk}
    assert StepResult.objects.filter(run_id__in=left).count() == 6
    assert WorkflowRun.objects.get(pk=child.pk).parent_id is None
    assert Event.objects.get(pk=recent.event_id).source_run_id is None
    assert Event.objects.count() == 28  # events are kept


# --- plans -------------------------------------------------------------------------------

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="EXPLAIN (FORMAT JSON) plans are PostgreSQL's; SQLite's planner is another one",
)


def _seq_scans(sql: str, params: object = None) -> list[str]:
    """The big tables ``sql``'s plan reads with a sequential scan."""
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    found = []

    def walk(node: dict) -> None:
        if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in BIG_TABLES:
            found.append(node["Relation Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


def _indexes(sql: str, params: object = None) -> set[str]:
    """The indexes ``sql``'s plan reads."""
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    found: set[str] = set()

    def walk(node: dict) -> None:
        if "Index Name" in node:
            found.add(node["Index Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


def _on_big_tables(queries: CaptureQueriesContext) -> list[str]:
    return [
        q["sql"]
        for q in queries.captured_queries
        if any(table in q["sql"] for table in BIG_TABLES) and q["sql"].startswith("SELECT")
    ]


@pytest.fixture
def filled():
    scale.fill(20_000, vacuum=False)
    # Active runs, sleeping for an hour: the dispatcher's due-time query must find the
    # few due among them by the due-time index, not by walking every active run.
    runs = _runs(2_000, status=RunStatus.SLEEPING, age_days=0)
    later = timezone.now() + timedelta(hours=1)
    WorkflowRun.objects.filter(pk__in=[run.pk for run in runs]).update(wake_at=later, due_at=later)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE workflows_workflowrun")


@postgres_only
def test_hot_queries_use_indexes_on_big_tables(filled, client, monkeypatch):
    # The lists count at most CappedPaginator.CAP rows (10,000): on a million rows that
    # is 1 %, and the planner reads an index. On the 20,000 rows here it would be half
    # the table, where a sequential scan is the better plan: keep the proportion.
    monkeypatch.setattr(CappedPaginator, "CAP", 200)
    user = get_user_model().objects.create_superuser("plans", "p@example.com", "x")
    client.force_login(user)
    workspace = bus.get_workspace("scale-1")
    pages = [
        "/admin/workflows/workflowrun/",
        "/admin/workflows/workflowrun/?status__exact=failed",
        "/admin/workflows/workflowrun/?workflow_id=bench-park",
        f"/admin/workflows/workflowrun/?workspace__id__exact={workspace.pk}",
        "/admin/eventbus/event/",
        f"/admin/eventbus/event/?workspace__id__exact={workspace.pk}",
        "/admin/eventbus/event/?name=bench%2Fleaf",
        "/admin/workflows/stepresult/",
        "/admin/workflows/stepresult/?kind__exact=send_event",
    ]
    statements: list[tuple[str, str, object]] = []
    for url in pages:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200
        found = _on_big_tables(queries)
        assert found, url
        statements += [(url, sql, None) for sql in found]

    # The run claim, as runstore_pg builds it.
    sql, constants, *_ = runstore_pg._claim_statement("free")
    now = timezone.now()
    params = {**constants, "id": uuid.uuid4(), "token": "t", "now": now, "lease": now}
    statements.append(("claim", sql, params))
    # take_due, emit_due (their SELECTs, captured).
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        runstore.take_due(100, ahead=10)
    statements += [("take_due", sql, None) for sql in _on_big_tables(queries)]
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        bus.emit_due(100)
    statements += [("emit_due", sql, None) for sql in _on_big_tables(queries)]
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        bus.arm_due(100)
    statements += [("arm_due", sql, None) for sql in _on_big_tables(queries)]
    # The wait lookup of workflows.waits.arrivals: candidates with their run and trigger.
    candidates = (
        Wait.objects.filter(workspace_id=workspace.pk, event_name="x", match_hash__in=[""])
        .select_related("run__event")
        .order_by("created_at", "pk")
    )
    sql, params = candidates.query.sql_with_params()
    statements.append(("wait lookup", sql, params))

    scans = [
        (what, tables, sql[:200])
        for what, sql, params in statements
        if (tables := _seq_scans(sql, params))
    ]
    assert not scans, scans
    # No sequential scan is not enough: without its own index a query can fall back on
    # another one and still pass the check above (take_due did, on the timeout index,
    # while no run was active). The engine's hot paths name theirs.
    used: dict[str, set[str]] = {}
    for what, sql, params in statements:
        used.setdefault(what, set()).update(_indexes(sql, params))
    expected = {
        "claim": "workflows_workflowrun_pkey",
        "take_due": "workflows_run_due",
        "emit_due": "eventbus_event_scheduled_ts",
        "arm_due": "eventbus_event_unarmed_ts",
        "wait lookup": "workflows_wait_event",
        "/admin/workflows/workflowrun/": "workflows_run_created",
        "/admin/workflows/workflowrun/?status__exact=failed": "workflows_run_status",
        "/admin/eventbus/event/": "eventbus_event_created",
    }
    missing = {
        what: (index, sorted(used[what]))
        for what, index in expected.items()
        if index not in used[what]
    }
    assert not missing, missing
