"""Deploys with real workers: a run starts on one deploy and resumes on the next.

Each deploy is ``tests/deploy_workflows.py`` under another ``H17_DEPLOY``: the worker of
one deploy is stopped while the runs sleep, and the next deploy's worker resumes them.
The pre-deploy check and the replay run as an operator runs them: ``manage.py`` with the
new deploy's code.
"""

import os
import subprocess
import sys

import pytest
from django.db import connection

import workflows
from eventbus import bus
from tests.conftest import ROOT, wait_until
from tests.testapp.models import LedgerEntry
from workflows.models import RunStatus, StepKind, WorkflowRun

pytestmark = pytest.mark.worker


def manage(deploy: str, *args: str) -> subprocess.CompletedProcess:
    """``manage.py`` against the test database, with the code of ``deploy``."""
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="tests.settings",
        WORKFLOWS_TEST_DATABASE_NAME=str(connection.settings_dict["NAME"]),
        PYTHONPATH=str(ROOT),
        H17_DEPLOY=deploy,
    )
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_of(event_id) -> WorkflowRun:
    return wait_until(lambda: WorkflowRun.objects.filter(event_id=event_id).first(), what="the run")


def status_is(run: WorkflowRun, *statuses: str):
    def check():
        run.refresh_from_db()
        return run.status in statuses

    return check


def test_runs_started_on_one_deploy_resume_on_the_next(start_worker):
    deploy_a = start_worker(env={"H17_DEPLOY": "a"})
    old = run_of(bus.send("h17/patch", {"seconds": 6}))
    paused = run_of(bus.send("h17/pause", {"seconds": 6}))
    for run in (old, paused):
        wait_until(status_is(run, RunStatus.SLEEPING), what="the sleep", timeout=60)
        assert run.version == "a"
    # The deploy takes deploy a's worker away at once: a warm shutdown can outlast the
    # sleeps on a busy machine, and the old worker would run them on the old code.
    deploy_a.kill()

    # The pre-deploy check, with deploy b's code: the run whose sleep became a step
    # would break there; the run behind ctx.patched would not. Nothing is written.
    steps_before = sorted(old.steps.values_list("key", "status")) + sorted(
        paused.steps.values_list("key", "status")
    )
    check = manage("b", "check_workflows")
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"{paused.pk} h17-pause step 'nap'" in check.stdout
    assert str(old.pk) not in check.stdout
    assert "1 of 2 active run(s) would break" in check.stderr
    assert steps_before == sorted(old.steps.values_list("key", "status")) + sorted(
        paused.steps.values_list("key", "status")
    )

    deploy_b = start_worker(env={"H17_DEPLOY": "b"})
    sent = manage("b", "send_event", "h17/patch", "--data", '{"seconds": 0}', "--id", "new")
    assert sent.returncode == 0, sent.stderr
    new = wait_until(
        lambda: WorkflowRun.objects.filter(workflow_id="h17-patch").exclude(pk=old.pk).first(),
        what="the new run",
    )
    wait_until(status_is(old, RunStatus.COMPLETED), what="the old run", timeout=90)
    wait_until(status_is(new, RunStatus.COMPLETED), what="the new run", timeout=90)
    # The run that had slept past the patch point keeps the old path; a new run takes
    # the new one, with its marker.
    assert old.output == {"path": "old", "deploy": "b"}, deploy_b.tail()
    assert not old.steps.filter(kind=StepKind.PATCH).exists()
    assert not LedgerEntry.objects.filter(run_id=str(old.pk), step="extra").exists()
    assert new.output == {"path": "new", "deploy": "b"} and new.version == "b"
    assert list(new.steps.filter(kind=StepKind.PATCH).values_list("step_id", flat=True)) == [
        "extra-step"
    ]

    # The run whose sleep became a step pauses there, holding no worker.
    wait_until(status_is(paused, RunStatus.PAUSED), what="the pause", timeout=90)
    assert paused.lease_owner is None and paused.due_at is None
    assert paused.error["type"] == "NonDeterminismError"
    assert paused.error["step_id"] == "nap"
    assert paused.error["recorded"] == "a sleep step"
    assert paused.error["called"] == "step.run"
    # Resumed on code that still does not fit: paused again.
    assert workflows.resume_run(paused.pk).status == RunStatus.QUEUED
    wait_until(status_is(paused, RunStatus.PAUSED), what="the second pause", timeout=90)
    assert paused.started_at is not None
    # Replayed from the changed step on deploy b: a new run that completes.
    replay = manage("b", "replay_run", str(paused.pk), "--from-step", "nap")
    assert replay.returncode == 0, replay.stderr
    copy = WorkflowRun.objects.get(pk=replay.stdout.splitlines()[0].strip())
    wait_until(status_is(copy, RunStatus.COMPLETED), what="the replay", timeout=90)
    assert copy.output == {"deploy": "b"} and copy.version == "b"
    assert LedgerEntry.objects.filter(run_id=str(copy.pk), step="first").count() == 0
    deploy_b.stop()

    # Deploy c guards the change with ctx.patched: the check passes, and the paused
    # run, resumed, finishes on the old path (its sleep).
    check = manage("c", "check_workflows")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "All 1 active run(s) fit this code." in check.stdout
    start_worker(env={"H17_DEPLOY": "c"})
    workflows.resume_run(paused.pk)
    wait_until(status_is(paused, RunStatus.COMPLETED), what="the resumed run", timeout=90)
    assert paused.output == {"deploy": "c"} and paused.error is None
    assert not LedgerEntry.objects.filter(run_id=str(paused.pk), step="nap").exists()
    assert LedgerEntry.objects.filter(run_id=str(paused.pk), step="first").count() == 1
