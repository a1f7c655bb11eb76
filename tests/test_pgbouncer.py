"""The engine behind PgBouncer in transaction pooling mode.

Under transaction pooling, each transaction of a client connection may run on another
server session: whatever outlives a transaction on the server (a cursor ``WITH HOLD``, a
prepared statement, a session ``SET``, a session advisory lock) is missing on the next
one. These tests make the sessions change on purpose: another client opens a transaction
(PgBouncer hands out its idle server connections last-in first-out, so it takes the one
this process just used), and this process's next statement runs on another session.

They run when ``WORKFLOWS_PGBOUNCER=1`` says ``DATABASE_URL`` is such a bouncer
(``.ci/run`` starts one); ``settings/settings.py`` then configures Django for it.
"""

import contextlib
import os
from collections.abc import Iterator

import pytest
from django.db import connection

import eventbus
from tests import admin_workflows
from workflows import runstore_pg, services, testing

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("WORKFLOWS_PGBOUNCER") != "1",
        reason="set WORKFLOWS_PGBOUNCER=1 with DATABASE_URL pointing at a PgBouncer in "
        "transaction pooling mode (.ci/run does, in its PgBouncer stage)",
    ),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture(autouse=True)
def _fresh_admin_workflows():
    yield from admin_workflows.fresh_state()


@contextlib.contextmanager
def other_client() -> Iterator[None]:
    """Meanwhile, another client of the bouncer holds a transaction open.

    It takes the server session this process used last; this process's statements run
    on another one until it ends.
    """
    import psycopg

    params = connection.settings_dict
    with psycopg.connect(
        host=params["HOST"],
        port=params["PORT"],
        user=params["USER"],
        password=params["PASSWORD"] or None,
        dbname=params["NAME"],
        autocommit=False,
    ) as other:
        other.execute("SELECT 1")  # BEGIN: a server session is now its own
        yield
        other.rollback()


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def test_sessions_change_between_transactions():
    """The premise of the other tests: this really is transaction pooling."""
    first = backend_pid()
    with other_client():
        second = backend_pid()
    assert first != second, (
        "the server session did not change: DATABASE_URL is not a PgBouncer in "
        "transaction pooling mode"
    )


def test_settings_keep_cursors_and_prepared_statements_out_of_sessions():
    assert connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert connection.get_connection_params().get("prepare_threshold") is None


def test_statements_repeated_past_the_prepare_threshold_on_changing_sessions():
    """psycopg prepares a query after ``prepare_threshold`` (5) executions: on the next
    session the prepared statement would be missing. Django leaves it off; keep it so."""
    eventbus.send("adm/steps", {"n": 1})
    testing.drain(skip_time=True)
    pids = set()
    for n in range(12):
        # Every other statement on another session (see other_client).
        with other_client() if n % 2 else contextlib.nullcontext():
            pids.add(backend_pid())
            assert services.select_runs(workflow="adm-steps").count() == 1
    assert len(pids) >= 2
    # And the engine's own statements, many times over: a run of 30 steps, in-process.
    eventbus.send("adm/many", {"count": 30})
    testing.drain(skip_time=True)
    run = services.select_runs(workflow="adm-many").get()
    assert run.status == "completed" and run.output == {"total": sum(range(30))}


def test_the_engine_prepares_nothing_behind_the_bouncer(monkeypatch):
    """``DISABLE_SERVER_SIDE_CURSORS`` tells the engine a pooler is in front: the memo
    insert, which it prepares elsewhere, is sent unprepared, on any session."""
    monkeypatch.setattr(runstore_pg, "_missing", [])
    eventbus.send("adm/many", {"count": 8})
    with other_client():  # the steps run on a session other than the send's
        testing.drain(skip_time=True)
    run = services.select_runs(workflow="adm-many").get()
    assert run.status == "completed" and run.steps.count() == 8
    assert runstore_pg._missing == []  # no statement was missing: none was prepared


def test_a_prepared_statement_missing_on_the_next_session_costs_a_retry(
    settings, monkeypatch, caplog
):
    """Told to prepare (as for PgBouncer 1.21 with ``max_prepared_statements``) behind
    one that cannot keep prepared statements (Debian's 1.18): the statement prepared on
    one session is missing on the next. The step's insert runs again unprepared, the
    run completes, and the process prepares no more."""
    monkeypatch.setattr(runstore_pg, "_missing", [])
    settings.WORKFLOWS = {**getattr(settings, "WORKFLOWS", {}), "PREPARED_STATEMENTS": True}
    eventbus.send("adm/many", {"count": 2})
    testing.drain(skip_time=True)  # prepares the memo insert on the session it ran on
    eventbus.send("adm/many", {"count": 3})
    with other_client(), caplog.at_level("WARNING", logger="workflows.runstore_pg"):
        testing.drain(skip_time=True)  # on another session, where it was never prepared
    first, second = services.select_runs(workflow="adm-many").order_by("created_at")
    assert first.status == second.status == "completed"
    assert (first.steps.count(), second.steps.count()) == (2, 3)
    assert len(runstore_pg._missing) == 1 and "does not exist" in runstore_pg._missing[0]
    assert any("prepares no more" in r.getMessage() for r in caplog.records)


def test_bulk_replay_reads_its_ids_with_no_cursor_across_transactions():
    """``replay_many`` iterates ids while each replay commits: a server-side cursor
    (``DECLARE … WITH HOLD``) stays in the session it was declared in, and the next
    ``FETCH`` on another session fails with "cursor … does not exist"."""
    for n in range(3):
        eventbus.send("adm/steps", {"n": n})
    testing.drain(skip_time=True)
    outcomes = services.replay_many(services.select_runs(workflow="adm-steps"))
    first = [next(outcomes) for _ in range(3)]
    assert all(outcome.replay is not None for outcome in first)
    with other_client():
        assert list(outcomes) == []  # the iterator's next fetch, on another session
