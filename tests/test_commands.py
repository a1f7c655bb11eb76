"""The management commands: thin wrappers over the services, with clear errors."""

from datetime import timedelta

import pytest
from django.core.management.base import CommandError
from django.utils import timezone

import eventbus
from eventbus.models import Event
from tests import admin_workflows, conftest
from tests.conftest import run_command as run
from workflows import testing
from workflows.models import RunStatus, WorkflowRun

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _reset():
    yield from admin_workflows.fresh_state()


def failed_run() -> WorkflowRun:
    return conftest.failed_run(order=1)


def test_send_event_stores_and_triggers():
    out = run("send_event", "adm/steps", "--data", '{"n": 5}', "--id", "k1")
    event = Event.objects.get(idempotency_key="k1")
    assert str(event.pk) in out and event.data == {"n": 5}
    assert "triggered adm-steps" in out
    # The same idempotency key returns the first event and triggers nothing new.
    again = run("send_event", "adm/steps", "--data", '{"n": 6}', "--id", "k1")
    assert again.splitlines()[0] == str(event.pk)
    assert WorkflowRun.objects.filter(workflow_id="adm-steps").count() == 1


def test_send_event_deferred_with_ts():
    ts = int((timezone.now() + timedelta(hours=1)).timestamp() * 1000)
    run("send_event", "adm/steps", "--ts", str(ts))
    assert Event.objects.get().status == "scheduled"


def test_replay_run_and_from_step():
    original = failed_run()
    admin_workflows.FLAKY["fail"] = False
    out = run("replay_run", str(original.pk))
    assert "Replayed run" in out
    out = run("replay_run", str(original.pk), "--from-step", "charge")
    new_id = out.splitlines()[0]
    replay = WorkflowRun.objects.get(pk=new_id)
    assert replay.replay_of_id == original.pk
    assert "keeping 2 step(s)" in out
    testing.drain(skip_time=True)
    replay.refresh_from_db()
    assert replay.status == RunStatus.COMPLETED


def test_bulk_replay_shows_progress_and_summary():
    for n in range(3):
        eventbus.send("adm/flaky", {"n": n})
    testing.drain(skip_time=True)
    since = (timezone.now() - timedelta(hours=1)).isoformat()
    dry = run("replay_run", "--workflow", "adm-flaky", "--status", "failed", "--dry-run")
    assert "Would replay 3 run(s)." in dry
    out = run("replay_run", "--workflow", "adm-flaky", "--status", "failed", "--since", since)
    assert "[1/3]" in out and "[3/3]" in out
    assert "Replayed 3 of 3 run(s); 0 failed." in out
    assert WorkflowRun.objects.filter(replay_of__isnull=False).count() == 3


def test_replay_event_command():
    event_id = eventbus.send("adm/steps", {"n": 1})
    out = run("replay_event", event_id)
    assert "Started 1 run(s)." in out and "replay of" in out


def test_cancel_run_command():
    eventbus.send("adm/steps", {"n": 1})
    active = WorkflowRun.objects.get()
    assert "Cancelled run" in run("cancel_run", str(active.pk))
    with pytest.raises(CommandError, match="had already finished"):
        run("cancel_run", str(active.pk))


def test_list_runs_table_and_filters():
    failed_run()
    eventbus.send("adm/steps", {"n": 1})
    out = run("list_runs")
    assert out.splitlines()[0].split() == [
        "ID", "WORKFLOW", "VERSION", "STATUS", "WORKSPACE", "CREATED", "DURATION", "ATTEMPT",
    ]  # fmt: skip
    assert "adm-flaky" in out and "adm-steps" in out
    out = run("list_runs", "--status", "failed")
    assert "adm-flaky" in out and "adm-steps" not in out
    assert "No runs match." in run("list_runs", "--workflow", "unknown-wf")


def test_show_run_prints_a_timeline():
    original = failed_run()
    out = run("show_run", str(original.pk))
    assert "Status    failed" in out
    assert "card declined" in out and "Traceback" in out
    lines = [line for line in out.splitlines() if line.rstrip().endswith("|")]
    assert len(lines) == 3
    assert "charge" in lines[2] and "failed" in lines[2] and "x2" in lines[2] and "!" in lines[2]


def test_purge_runs_command():
    for n in range(3):
        eventbus.send("adm/flaky", {"n": n})
    testing.drain(skip_time=True)
    WorkflowRun.objects.update(created_at=timezone.now() - timedelta(days=10))
    assert "Would delete 3 run(s)." in run("purge_runs", "--older-than", "7", "--dry-run")
    out = run("purge_runs", "--older-than", "7", "--status", "failed", "--batch-size", "2")
    assert "deleted 2/3 run(s)" in out and "Purged 3 run(s)." in out
    assert not WorkflowRun.objects.exists()


def test_a_bad_argument_exits_non_zero_from_the_shell():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {"DJANGO_SETTINGS_MODULE": "tests.settings", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "manage.py", "send_event", "adm/steps", "--data", "{oops"],
        cwd=root, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "CommandError: --data is not valid JSON" in done.stderr


def test_dates_with_any_offset_select_runs_by_their_utc_time():
    original = failed_run()
    # +16:00 is beyond what PostgreSQL takes as an offset; as UTC it is an ordinary date.
    before = (original.created_at - timedelta(hours=1)).astimezone(
        timezone.get_fixed_timezone(16 * 60)
    )
    since = before.isoformat()
    assert since.endswith("+16:00")
    assert "Would replay 1 run(s)." in run(
        "replay_run", "--workflow", "adm-flaky", "--since", since, "--dry-run"
    )
    assert str(original.pk) in run("list_runs", "--since", since)
    until = before.astimezone(timezone.get_fixed_timezone(-(23 * 60 + 59))).isoformat()
    assert "Would replay 0 run(s)." in run(
        "replay_run", "--workflow", "adm-flaky", "--until", until, "--dry-run"
    )


def test_show_run_escapes_control_characters_written_by_workflow_code():
    original = failed_run()
    WorkflowRun.objects.filter(pk=original.pk).update(
        error={
            "type": "Boom\x1b[2J",
            "message": "card \x1b[31mdeclined\u202e\x9b",
            "traceback": "Traceback:\n  line \x1b]0;pwned\x07 here\n",
        }
    )
    original.steps.filter(step_id="charge").update(step_id="charge\x1b[0m\u200b")
    out = run("show_run", str(original.pk))
    for raw in ("\x1b", "\x07", "\x9b", "\u202e", "\u200b"):
        assert raw not in out
    assert "Boom\\x1b[2J: card \\x1b[31mdeclined\\u202e\\x9b" in out
    assert "  line \\x1b]0;pwned\\x07 here" in out.splitlines()  # lines kept
    assert "charge\\x1b[0m\\u200b" in out


def test_show_run_of_a_cancelled_sleep_shows_it_cancelled_not_sleeping():
    eventbus.send("adm/steps", {"n": 1})
    testing.drain()
    sleeper = WorkflowRun.objects.get(workflow_id="adm-steps")
    assert sleeper.status == RunStatus.SLEEPING
    run("cancel_run", str(sleeper.pk))
    out = run("show_run", str(sleeper.pk))
    (pause,) = [line for line in out.splitlines() if " pause " in line]
    assert "cancelled" in pause and "sleeping" not in pause
    assert "~" not in pause and "-" in pause.split("|")[1]
    assert "…" not in pause  # a duration, not "still going on"
