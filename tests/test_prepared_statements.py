"""PostgreSQL: the statements that write a step's memo, claim a run, store a sent event
and end a run are prepared once per connection.

Prepared, PostgreSQL plans each once per connection instead of at every step (a third
of a step's time) and every claim (0.4 ms); a lock and the statement after it (a send,
the end of a run, a claim in a concurrency group) go as a pipeline of two prepared
statements. Behind a pooler in transaction mode nothing is prepared, and a prepared
statement that goes missing under the engine costs one retry, never a run.
"""

import logging
import uuid
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from eventbus.models import Event
from tests.conftest import start_run as start
from workflows import engine, runstore_pg
from workflows.models import RunStatus, WorkflowRun

pytestmark = [
    pytest.mark.django_db(transaction=True),  # as a worker: the fast path, no test transaction
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL prepares"),
]

MEMO_INSERT = 'INSERT INTO "workflows_stepresult"%'
CLAIM = "%WITH relaxed AS%UPDATE%"


@pytest.fixture(autouse=True)
def nothing_prepared_yet(monkeypatch):
    """Each test starts with no prepared statement on its connection, preparing allowed."""
    monkeypatch.setattr(runstore_pg, "_missing", [])
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")  # psycopg sees it and forgets what it prepared


def run_of(steps: int) -> None:
    run = start("test/loop", {"n": steps})
    assert engine.execute(run.pk) == RunStatus.COMPLETED


def prepared(like: str = MEMO_INSERT) -> list[int]:
    """How often each prepared statement like ``like`` ran on this connection."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans + custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE %s",
            [like],
        )
        return [row[0] for row in cursor.fetchall()]


def test_the_memo_insert_is_prepared_once_and_executed_by_name_at_every_step():
    run_of(3)
    run_of(4)
    # One statement, prepared once, executed at each of the 7 steps but the last of each
    # run (its memo is stored with the run's end). PostgreSQL plans a prepared statement
    # anew its first five times, then keeps one generic plan.
    assert prepared() == [5]


def test_the_claim_is_prepared_and_its_transaction_still_skips_the_disk_flush():
    run_of(1)
    run_of(1)
    assert prepared(CLAIM) == [2]
    # The claim is its own transaction and commits without waiting for the disk: what
    # SET LOCAL synchronous_commit TO OFF did in front of it, the statement now does
    # itself (a statement of two commands cannot be prepared).
    run = start("test/loop", {"n": 1})
    sql, constants, *_ = runstore_pg._claim_statement("free", relaxed=True)
    now = timezone.now()
    params = {**constants, "id": run.pk, "token": "t", "now": now, "lease": now + timedelta(1)}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone() == ("on",)
        cursor.execute(sql, params)
        assert cursor.fetchone() is not None  # claimed
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone() == ("off",)
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")  # for that transaction only
        assert cursor.fetchone() == ("on",)


def test_nothing_is_prepared_inside_a_transaction():
    # Inside the caller's transaction a prepared statement missing (a pooler) would fail
    # the transaction, where one that is its own transaction is simply run again.
    with transaction.atomic():
        for _ in range(3):
            start("test/loop", {"n": 1})
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        assert cursor.fetchone() == (0,)


def test_under_manual_transactions_nothing_is_prepared_or_relaxed():
    """``set_autocommit(False)`` opens a transaction without an atomic block. The engine
    cannot run there (its bells wait for the commit with ``on_commit``, which Django
    refuses under manual transaction management), but its fast paths keep out of such a
    transaction before that error: no statement prepared in it, no commit relaxed, no
    pipeline, so the caller's rollback takes back all it wrote."""
    from django.db.transaction import TransactionManagementError

    transaction.set_autocommit(False)
    try:
        assert not runstore_pg.on_its_own(connection)
        with pytest.raises(TransactionManagementError, match="manual transaction"):
            start("test/loop", {"n": 1})
        runstore_pg.execute_prepared(connection, "SELECT %s::int", [1])  # as a claim would
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_prepared_statements")
            assert cursor.fetchone() == (0,)
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone() == ("on",)
        transaction.rollback()
    finally:
        transaction.set_autocommit(True)
    assert not Event.objects.filter(name="test/loop").exists()
    assert runstore_pg.on_its_own(connection)


def test_a_send_on_its_own_is_a_pipeline_of_two_prepared_statements():
    """The emitters' lock, then the statement that stores the event and its runs: sent
    together, one round trip, each prepared once and then executed by name, and run by
    PostgreSQL as one transaction (the lock is held until it commits)."""
    for _ in range(3):
        start("test/loop", {"n": 1})
    assert prepared("SELECT pg_advisory_xact_lock_shared(%") == [3]
    assert prepared("WITH held AS%") == [3]


def test_a_pipeline_that_finds_its_statement_lost_is_sent_again_the_other_way(caplog):
    start("test/loop", {"n": 1})
    assert prepared("WITH held AS%") == [1]
    connection.connection.pgconn.exec_(b"DEALLOCATE ALL")  # behind psycopg's back
    with caplog.at_level(logging.WARNING, logger="workflows.runstore_pg"):
        run = start("test/loop", {"n": 1})
    assert run is not None and Event.objects.filter(pk=run.event_id).count() == 1
    assert WorkflowRun.objects.filter(event_id=run.event_id).count() == 1
    (warning,) = [r for r in caplog.records if r.name == "workflows.runstore_pg"]
    assert "PREPARED_STATEMENTS" in warning.getMessage()
    assert engine.execute(run.pk) == RunStatus.COMPLETED
    assert prepared("WITH held AS%") == []  # the process prepares no more


@pytest.mark.parametrize("how", ["told not to", "behind a pooler"])
def test_nothing_is_prepared_when_told_not_to_or_when_django_is_set_for_a_pooler(
    how, settings, monkeypatch
):
    if how == "told not to":
        settings.WORKFLOWS = {**getattr(settings, "WORKFLOWS", {}), "PREPARED_STATEMENTS": False}
    else:
        # What Django asks of a project behind PgBouncer in transaction mode.
        monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    run_of(3)
    assert prepared() == []


def test_told_to_prepare_it_prepares_even_when_django_is_set_for_a_pooler(settings, monkeypatch):
    # PgBouncer 1.21 and later keep protocol-level prepared statements across sessions.
    settings.WORKFLOWS = {**getattr(settings, "WORKFLOWS", {}), "PREPARED_STATEMENTS": True}
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    run_of(3)
    assert prepared() == [2]


def test_a_prepared_statement_lost_under_the_engine_costs_a_retry_and_ends_preparing(caplog):
    run_of(2)
    assert prepared() == [1]
    # What a pooler in transaction mode does: the next statement lands on a server
    # session that never saw it prepared. Dropped behind psycopg's back, so psycopg
    # still believes it is there and executes it by name.
    connection.connection.pgconn.exec_(b"DEALLOCATE ALL")
    with caplog.at_level(logging.WARNING, logger="workflows.runstore_pg"):
        run = start("test/loop", {"n": 3})
        assert engine.execute(run.pk) == RunStatus.COMPLETED
    run.refresh_from_db()
    assert run.steps.count() == 3 and run.output == {"total": 3}
    (warning,) = [r for r in caplog.records if r.name == "workflows.runstore_pg"]
    assert "DISABLE_SERVER_SIDE_CURSORS" in warning.getMessage()
    assert "PREPARED_STATEMENTS" in warning.getMessage()
    # The process prepares no more: the retry and the later steps ran unprepared.
    run_of(2)
    assert prepared() == []


def test_psycopg_keeps_the_parsed_form_of_every_hot_statement(monkeypatch):
    """psycopg parses a statement longer than 4096 bytes, or with more than 50
    parameters, again at every execution (``runstore_pg._compact``); the claim was longer
    once. Here every statement of a send, a claim (free and in a concurrency group), a
    step and a run's end is parsed from psycopg's cache after its first time."""
    from psycopg import _queries

    parsed_again: list[str] = []
    for name in ("_query2pg_nocache", "_query2pg_client_nocache"):
        original = getattr(_queries, name)

        def counting(query, encoding, _original=original):
            parsed_again.append(bytes(query).decode()[:120])
            return _original(query, encoding)

        monkeypatch.setattr(_queries, name, counting)
    run_of(2)
    run_of(2)
    first, second = start("flow/one", {"seconds": 0}), start("flow/one", {"seconds": 0})
    assert engine.execute(first.pk) == RunStatus.COMPLETED
    assert engine.execute(second.pk) == RunStatus.COMPLETED
    assert parsed_again == []


@pytest.mark.filterwarnings("ignore:DateTimeField .* received a naive datetime")
def test_insert_values_are_what_the_orm_would_write():
    """The statements' values skip the ORM's preparing only where it changes nothing: a
    naive datetime, a text field given a number and an int given a bool still take the
    ORM's way, integers are typed as Django types them, and an ``auto_now`` field is
    stamped as the ORM stamps it."""
    from workflows.models import StepKind, StepResult

    aware = timezone.now()
    run_id = uuid.uuid4()
    instances = [
        StepResult(run_id=run_id, step_id="s", key="k", position=2, kind=StepKind.RUN,
                   output={"a": [1, "x"]}, output_bytes=13, started_at=aware),
        StepResult(run_id=str(run_id), step_id=7, key="k", position=True, kind="run",
                   output=None, started_at=aware.replace(tzinfo=None), wake_at=aware),
        WorkflowRun(pk=run_id, workflow_id="w", event_id=uuid.uuid4(), workspace_id=3,
                    priority=-5, due_at=aware, output={"n": 1}, slot_1=None),
        Event(name="x/y", data={"k": "v"}, ts=1_700_000_000_000, workspace_id=3),
    ]  # fmt: skip
    for instance in instances:
        fields = list(type(instance)._meta.concrete_fields)
        fast = runstore_pg._insert_values(instance, fields, connection)
        slow = [f.get_db_prep_save(f.pre_save(instance, True), connection) for f in fields]
        for k, field in enumerate(fields):
            if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
                assert abs(fast[k] - slow[k]) < timedelta(seconds=5)  # now, either way
                fast[k] = slow[k] = None
        assert [repr(v) for v in fast] == [repr(v) for v in slow]
        assert id(fields) in runstore_pg._preparers  # chosen once per list of fields


@pytest.mark.parametrize("zone", ["UTC", "America/Chicago"])
def test_the_engines_cursors_read_timestamps_as_django_does(zone):
    """The kept cursors parse ``timestamptz`` with the C parser of ISO dates: the same
    values as Django's loader, in the session's zone or another, with fractions or
    none; what the C parser refuses (a BC date, an infinity) fails as Django's does."""
    values = [
        "2026-12-04 19:14:00.5+00", "2026-12-04 19:14:00+00", "1999-03-28 01:59:59.999999+00",
        "2026-03-08 08:30:00.000001+00", "0001-01-03 00:00:00+00", "9999-12-30 23:59:59+00",
    ]  # fmt: skip
    sql = "SELECT " + ", ".join(f"CAST(%s AS timestamptz) AS t{n}" for n in range(len(values)))
    with connection.cursor() as cursor:
        cursor.execute(f"SET TIME ZONE '{zone}'")
        try:
            cursor.execute(sql, values)
            expected = cursor.fetchone()
            got = runstore_pg.execute_prepared(connection, sql, values).fetchone()
            assert [(v, v.tzinfo) for v in got] == [(v, v.tzinfo) for v in expected]
            loader = runstore_pg._kept_cursor(connection, True).adapters.get_loader(1184, 0)
            assert loader.__name__ == "IsoTimestamptzLoader"  # 1184: timestamptz, as text
            for odd in ("0044-03-15 12:00:00+00 BC", "infinity"):
                with pytest.raises(Exception) as django_way:
                    cursor.execute("SELECT CAST(%s AS timestamptz)", [odd])
                    cursor.fetchone()
                with pytest.raises(Exception) as ours:
                    runstore_pg.execute_prepared(
                        connection, "SELECT CAST(%s AS timestamptz)", [odd]
                    ).fetchone()
                assert str(ours.value) == str(django_way.value)
        finally:
            cursor.execute("SET TIME ZONE 'UTC'")
