"""The models and the migrations agree, and databases made by older migrations carry on.

The upgrade test builds a scratch database with the migrations as they were before the
squash (frozen in ``tests/legacy_migrations``), fills it, and migrates it with the
current ones, in processes of their own (``tests/migration_settings.py`` points them at
the scratch databases): a process's migration modules are fixed when it starts.
"""

import json
import os
import re
import subprocess
import sys
import uuid
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

from eventbus.models import Event
from workflows.models import WorkflowRun

ROOT = Path(__file__).resolve().parent.parent
#: The tables whose rows the upgrade test writes and compares.
TABLES = ("eventbus_workspace", "eventbus_event", "workflows_workflowrun", "workflows_stepresult")
SOURCE_COLUMNS = ({"source_run_id"}, {"source_step_id"})


@pytest.mark.django_db
def test_no_missing_migrations():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


@pytest.mark.django_db
def test_system_checks_pass():
    call_command("check", fail_level="WARNING")


def test_eventbus_migrations_never_depend_on_workflows():
    graph = MigrationLoader(None, ignore_no_migrations=True).graph
    eventbus_nodes = [node for node in graph.nodes if node[0] == "eventbus"]
    assert eventbus_nodes
    for node in eventbus_nodes:
        needed = {app for app, _ in graph.forwards_plan(node)}
        assert "workflows" not in needed, f"{node} needs workflows migrations"


# --- the upgrade from the legacy migrations ---------------------------------------------
def _postgres_url() -> str | None:
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith(("postgres://", "postgresql://")) else None


@pytest.fixture(params=["sqlite", "postgresql"])
def scratch_urls(request, tmp_path):
    """URLs of two empty scratch databases (to upgrade, and fresh), dropped afterwards."""
    if request.param == "sqlite":
        yield [f"sqlite:///{tmp_path / name}.sqlite3" for name in ("upgraded", "fresh")]
        return
    url = _postgres_url()
    if url is None:
        pytest.skip("DATABASE_URL is not a PostgreSQL URL")
    import psycopg

    config = dj_database_url.parse(url)
    server = psycopg.connect(
        dbname="postgres",
        user=config["USER"] or None,
        password=config["PASSWORD"] or None,
        host=config["HOST"] or None,
        port=config["PORT"] or None,
        autocommit=True,
    )
    stem = f"migtest_{uuid.uuid4().hex[:10]}"
    names = [f"{stem}_upgraded", f"{stem}_fresh"]
    try:
        for name in names:
            server.execute(f'CREATE DATABASE "{name}"')
        yield [urlsplit(url)._replace(path=f"/{name}").geturl() for name in names]
    finally:
        for name in names:
            server.execute(f'DROP DATABASE IF EXISTS "{name}"')
        server.close()


def _in_process(phase: str, urls: list[str], *, legacy: bool) -> dict[str, Any]:
    """Run ``phase`` (a function below) in a new process; return what it printed."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.migration_settings",
        "PYTHONPATH": str(ROOT),
        "MIGRATION_TEST_DATABASE_URL": urls[0],
        "MIGRATION_TEST_FRESH_DATABASE_URL": urls[1],
        "MIGRATION_TEST_LEGACY": "1" if legacy else "0",
    }
    env.pop("WORKFLOWS_TEST_DATABASE_NAME", None)
    code = f"import django; django.setup(); from tests import test_migrations as t; t.{phase}()"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{phase} failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rows() -> dict[str, list[dict[str, str]]]:
    """Every row of ``TABLES``, column by column, as text (column order may change)."""
    rows = {}
    with connection.cursor() as cursor:
        for table in TABLES:
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)} ORDER BY id")
            names = [column[0] for column in cursor.description]
            rows[table] = [
                {name: str(value) for name, value in zip(names, row, strict=True)}
                for row in cursor.fetchall()
            ]
    return rows


def _source_foreign_keys() -> list[str]:
    """Names of the foreign keys on ``eventbus_event``'s source columns."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "eventbus_event")
    return sorted(
        name
        for name, info in constraints.items()
        if info["foreign_key"] and set(info["columns"]) in SOURCE_COLUMNS
    )


def _fill_legacy_database() -> None:
    """Migrate with the legacy migrations; write a run whose step emitted an event."""
    call_command("migrate", "eventbus", verbosity=0)
    call_command("migrate", "workflows", verbosity=0)
    # The models as the legacy migrations left them (foreign keys included), not today's.
    models = MigrationLoader(connection).project_state().apps
    Workspace = models.get_model("eventbus", "Workspace")
    Event = models.get_model("eventbus", "Event")
    WorkflowRun = models.get_model("workflows", "WorkflowRun")
    StepResult = models.get_model("workflows", "StepResult")
    now = timezone.now()
    with transaction.atomic():
        workspace = Workspace.objects.create(slug="acme", name="Acme")
        trigger = Event.objects.create(
            workspace=workspace,
            name="order/placed",
            data={"order": 7, "lines": ["a", "b"]},
            ts=1_700_000_000_000,
            idempotency_key="order-7",
            emitted_at=now,
        )
        run = WorkflowRun.objects.create(
            workspace=workspace,
            workflow_id="ship-order",
            event=trigger,
            status="completed",
            output={"shipped": True},
            started_at=now,
            finished_at=now,
        )
        step = StepResult.objects.create(
            run=run,
            step_id="announce",
            key="a" * 40,
            position=0,
            kind="send_event",
            status="completed",
            output={"sent": True},
            finished_at=now,
        )
        emitted = Event.objects.create(
            workspace=workspace,
            name="order/shipped",
            data={"order": 7},
            ts=1_700_000_000_001,
            emitted_at=now,
            source_run=run,
            source_step=step,
        )
    ids = {"run": str(run.pk), "step": step.pk, "emitted": str(emitted.pk)}
    print(json.dumps({"rows": _rows(), "ids": ids, "foreign_keys": _source_foreign_keys()}))


def _upgrade_legacy_database() -> None:
    """Migrate with the current migrations; report rows, migrations and constraints."""
    call_command("migrate", "eventbus", verbosity=0)
    call_command("migrate", "workflows", verbosity=0)
    report: dict[str, Any] = {"rows": _rows(), "foreign_keys": _source_foreign_keys()}
    shown = StringIO()
    call_command("showmigrations", "eventbus", "workflows", stdout=shown, no_color=True)
    report["showmigrations"] = shown.getvalue()

    # No constraint left: deleting the run (and, by cascade, its step) must commit.
    emitted = Event.objects.get(source_run_id__isnull=False)
    try:
        with transaction.atomic():
            WorkflowRun.objects.filter(pk=emitted.source_run_id).delete()
        report["deleted"] = True
    except IntegrityError as exc:  # a foreign key left behind: report it to the test
        report["deleted"] = f"{type(exc).__name__}: {exc}"
    emitted.refresh_from_db()
    report["after_delete"] = [str(emitted.source_run_id), emitted.source_step_id]

    # A fresh database, migrated whole as `migrate` does it: the order it applies.
    applied = StringIO()
    call_command("migrate", database="fresh", verbosity=1, stdout=applied, no_color=True)
    report["fresh_order"] = re.findall(r"Applying (eventbus|workflows)\.(\w+)", applied.getvalue())
    print(json.dumps(report))


def test_a_database_made_by_the_legacy_migrations_migrates_forward(scratch_urls):
    before = _in_process("_fill_legacy_database", scratch_urls, legacy=True)
    # The legacy database has the foreign keys the upgrade must drop.
    assert len(before["foreign_keys"]) == 2

    after = _in_process("_upgrade_legacy_database", scratch_urls, legacy=False)

    # Every row is still there, every value unchanged (the default workspace included);
    # columns added since then are left out of the comparison.
    legacy = before["rows"]
    assert {
        table: [
            {name: row[name] for name in old} for row, old in zip(rows, legacy[table], strict=True)
        ]
        for table, rows in after["rows"].items()
    } == legacy
    assert {w["slug"] for w in after["rows"]["eventbus_workspace"]} == {"default", "acme"}
    emitted = next(e for e in after["rows"]["eventbus_event"] if e["name"] == "order/shipped")
    ids = before["ids"]
    assert uuid.UUID(emitted["source_run_id"]) == uuid.UUID(ids["run"])
    assert emitted["source_step_id"] == str(ids["step"])

    # Both squashed migrations count as applied, and so does everything after them.
    listing = after["showmigrations"]
    assert "[ ]" not in listing, listing
    assert "[X] 0001_squashed_0005_coordination" in listing
    assert "[X] 0001_squashed_0004_fewer_indexes" in listing
    assert "[X] 0002_drop_source_foreign_keys" in listing

    # The foreign keys are gone: the run and its step can go, the event keeps their ids.
    assert after["foreign_keys"] == []
    assert after["deleted"] is True, after["deleted"]
    assert after["after_delete"] == [ids["run"], ids["step"]]

    # A new database applies all of eventbus before any of workflows.
    apps = [app for app, _ in after["fresh_order"]]
    assert "eventbus" in apps and "workflows" in apps
    assert set(apps[apps.index("workflows") :]) == {"workflows"}, apps
