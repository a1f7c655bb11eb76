"""Schedules with a fixed clock: cron parsing, DST, catch-up, exactly once per slot,
the schedules API, reconciliation of ``cron=``, the admin page and ``list_schedules``.

The real-process tests (several dispatchers, latency) are in test_schedules_worker.py.
"""

from collections import Counter
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.urls import reverse

from eventbus.models import Event
from workflows import cron, firing, registry, schedules, workflow
from workflows.exceptions import (
    ScheduleError,
    UnknownScheduleError,
)
from workflows.models import Schedule, ScheduleSource, WorkflowRun

pytestmark = pytest.mark.django_db


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ms(*args: int) -> int:
    return cron.to_ms(utc(*args))


def slots(entry: str, start: datetime, end: datetime) -> list[datetime]:
    """Every slot of ``entry`` in (start, end], in UTC."""
    parsed, found, at = cron.parse(entry), [], cron.to_ms(start)
    while (at := cron.next_slot(parsed, at)) is not None and at <= cron.to_ms(end):
        found.append(cron.from_ms(at))
    return found


def fired_slots(schedule_id: str) -> list[int]:
    keys = Event.objects.filter(idempotency_key__startswith=f"cron:{schedule_id}:")
    return sorted(event.data["scheduled_at"] for event in keys)


@pytest.fixture
def code_cron():
    """Register a ``cron=`` workflow for one test (and forget it after)."""
    made: list[str] = []

    def define(workflow_id: str, entries):
        registry.unregister(workflow_id)
        workflow(id=workflow_id, cron=entries)(_code_target)
        made.append(workflow_id)
        return registry.get(workflow_id)

    yield define
    for workflow_id in made:
        registry.unregister(workflow_id)
    firing.reconcile()


def _code_target(ctx):
    return ctx.event.data


# --- parsing (bad entries: tests/test_catalogue.py) --------------------------------------
def test_five_and_six_fields_and_the_default_zone_is_utc():
    start = utc(2024, 1, 1, 0, 0)
    assert slots("0 2 * * *", start, utc(2024, 1, 3)) == [utc(2024, 1, 1, 2), utc(2024, 1, 2, 2)]
    assert slots("*/20 * * * * *", start, utc(2024, 1, 1, 0, 1)) == [
        utc(2024, 1, 1, 0, 0, 20),
        utc(2024, 1, 1, 0, 0, 40),
        utc(2024, 1, 1, 0, 1),
    ]
    assert slots("TZ=Europe/Paris 0 12 * * 1-5", start, utc(2024, 1, 3)) == [
        utc(2024, 1, 1, 11),  # Monday, noon in Paris is 11:00 UTC in winter
        utc(2024, 1, 2, 11),
    ]


# --- daylight saving time (fixed clock) ---------------------------------------------------
def test_dst_forward_a_local_time_that_does_not_exist_is_skipped():
    # Europe/Paris, 2024-03-31: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    daily = slots("TZ=Europe/Paris 30 2 * * *", utc(2024, 3, 29), utc(2024, 4, 2))
    assert daily == [utc(2024, 3, 29, 1, 30), utc(2024, 3, 30, 1, 30), utc(2024, 4, 1, 0, 30)]
    # Every 30 minutes: 02:00 and 02:30 do not exist, 01:30 is followed by 03:00.
    half_hourly = slots(
        "TZ=Europe/Paris */30 * * * *", utc(2024, 3, 31, 0), utc(2024, 3, 31, 1, 30)
    )
    assert half_hourly == [utc(2024, 3, 31, 0, 30), utc(2024, 3, 31, 1), utc(2024, 3, 31, 1, 30)]


def test_dst_back_a_local_time_that_occurs_twice_fires_once():
    # America/New_York, 2024-11-03: 02:00 EDT goes back to 01:00 EST (06:00 UTC); 01:30
    # occurs at 05:30 UTC and again at 06:30 UTC.
    daily = slots("TZ=America/New_York 30 1 * * *", utc(2024, 11, 2, 12), utc(2024, 11, 4, 12))
    assert daily == [utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)]
    # Every 30 minutes: the repeated hour's wall times fired at their first occurrence.
    half_hourly = slots(
        "TZ=America/New_York */30 * * * *", utc(2024, 11, 3, 4, 45), utc(2024, 11, 3, 7, 15)
    )
    assert half_hourly == [
        utc(2024, 11, 3, 5),  # 01:00 EDT
        utc(2024, 11, 3, 5, 30),  # 01:30 EDT
        utc(2024, 11, 3, 7),  # 02:00 EST; 01:00 and 01:30 EST are not fired again
    ]
    # The latest slot seen from inside the second pass of the hour is 01:30 EDT.
    parsed = cron.parse("TZ=America/New_York */30 * * * *")
    assert cron.latest_slot(parsed, ms(2024, 11, 3, 6, 50)) == ms(2024, 11, 3, 5, 30)


def test_dst_both_transitions_through_the_dispatcher_with_a_fixed_clock():
    row = schedules.create("dst", workflow="s-target", cron="TZ=Europe/Paris 30 2 * * *")

    def run_days(start: datetime, days: int) -> None:
        Schedule.objects.filter(pk=row.pk).update(
            next_fire_at=firing.next_fire_at(row.entries, start)
        )
        for minute in range(0, days * 24 * 60, 10):  # a pass every 10 minutes
            firing.fire_due(100, now=start + timedelta(minutes=minute))

    run_days(utc(2024, 3, 30, 12), 2)  # spring: 31 March has no 02:30
    run_days(utc(2024, 10, 26, 12), 2)  # autumn: 27 October has two
    assert fired_slots("dst") == [
        ms(2024, 3, 31, 0, 30) + 24 * 3600 * 1000,  # 1 April, 02:30 CEST
        ms(2024, 10, 27, 0, 30),  # 02:30 CEST, the first of the two
        ms(2024, 10, 28, 1, 30),  # 02:30 CET
    ]


# --- firing (fixed clock) -----------------------------------------------------------------
def test_a_slot_fires_once_never_before_it_and_the_event_says_what_fired():
    row = schedules.create("every-5", workflow="s-target", cron="*/5 * * * *", data={"k": 1})
    slot = row.next_fire_at
    assert firing.fire_due(100, now=slot - timedelta(milliseconds=1)) == 0
    assert not WorkflowRun.objects.exists()
    assert firing.fire_due(100, now=slot) == 1
    assert firing.fire_due(100, now=slot + timedelta(seconds=30)) == 0
    run = WorkflowRun.objects.select_related("event").get()
    assert run.workflow_id == "s-target" and run.event.name == "workflows/cron"
    assert run.event.data == {
        "workflow_id": "s-target",
        "cron": "*/5 * * * *",
        "scheduled_at": cron.to_ms(slot),
        "schedule_id": "every-5",
        "payload": {"k": 1},
    }
    assert run.event.idempotency_key == f"cron:every-5:{cron.to_ms(slot)}"
    row.refresh_from_db()
    assert row.last_fired_at == slot and row.next_fire_at == slot + timedelta(minutes=5)


def test_a_racing_dispatcher_that_saw_the_old_slot_starts_no_second_run():
    row = schedules.create("race", workflow="s-target", cron="* * * * * *")
    slot = row.next_fire_at
    firing.fire_due(100, now=slot)
    # A dispatcher without row locks that read the row before the first one moved it on:
    # its claim goes through on the stale value, and the event key refuses the slot.
    Schedule.objects.filter(pk=row.pk).update(next_fire_at=slot)
    firing.fire_due(100, now=slot)
    assert WorkflowRun.objects.count() == 1
    assert Event.objects.filter(name="workflows/cron").count() == 1


def test_catch_up_after_downtime_fires_only_the_latest_missed_slot():
    row = schedules.create("catch-up", workflow="s-target", cron="*/5 * * * *")
    first = row.next_fire_at
    firing.fire_due(100, now=first + timedelta(minutes=32))  # down for 32 minutes
    assert fired_slots("catch-up") == [cron.to_ms(first + timedelta(minutes=30))]
    row.refresh_from_db()
    assert row.next_fire_at == first + timedelta(minutes=35)


def test_entries_that_match_one_instant_start_one_run_with_the_first_matching_entry():
    row = schedules.create("two", workflow="s-target", cron=["*/10 * * * * *", "*/15 * * * * *"])
    start = row.next_fire_at.replace(second=0) + timedelta(minutes=1)
    Schedule.objects.filter(pk=row.pk).update(next_fire_at=start)
    for second in range(0, 31):
        firing.fire_due(100, now=start + timedelta(seconds=second))
    events = Event.objects.filter(name="workflows/cron").order_by("ts")
    assert [(e.ts - cron.to_ms(start)) // 1000 for e in events] == [0, 10, 15, 20, 30]
    assert [e.data["cron"] for e in events][:3] == ["*/10 * * * * *"] * 2 + ["*/15 * * * * *"]
    assert WorkflowRun.objects.count() == 5


def test_the_idle_pass_is_one_query(django_assert_num_queries):
    schedules.create("later", workflow="s-target", cron="0 0 1 1 *")
    with django_assert_num_queries(1):
        assert firing.fire_due(500) == 0


# --- the schedules API -------------------------------------------------------------------
def test_pause_resume_and_trigger():
    row = schedules.create("ops", workflow="s-target", cron="* * * * * *", data=[1, 2])
    paused = schedules.pause("ops")
    assert paused.paused and paused.next_fire_at is None
    assert firing.fire_due(100, now=row.next_fire_at + timedelta(hours=1)) == 0  # never fires
    run_id = schedules.trigger("ops")  # paused or not
    run = WorkflowRun.objects.select_related("event").get(pk=run_id)
    assert run.event.data["schedule_id"] == "ops" and run.event.data["payload"] == [1, 2]
    assert abs(run.event.data["scheduled_at"] - cron.to_ms(run.created_at)) < 2000
    resumed = schedules.resume("ops")
    assert not resumed.paused and resumed.next_fire_at > run.created_at  # from its next slot
    schedules.delete("ops")
    assert not Schedule.objects.filter(schedule_id="ops").exists()
    with pytest.raises(UnknownScheduleError, match="no schedule has the id 'ops'"):
        schedules.pause("ops")
    assert WorkflowRun.objects.count() == 1  # only the trigger


def test_update_changes_the_cron_from_its_next_slot():
    schedules.create("upd", workflow="s-target", cron="0 2 * * *")
    row = schedules.update("upd", cron="0 3 * * *", data={"v": 2})
    assert row.entries == ["0 3 * * *"] and row.data == {"v": 2}
    assert row.next_fire_at.hour == 3


# --- cron= in code: reconciled at start-up -----------------------------------------------
def test_code_crons_are_reconciled_writing_only_what_changed(code_cron, django_assert_num_queries):
    code_cron("s-code", "0 2 * * *")
    assert firing.reconcile() == 1
    row = Schedule.objects.get(schedule_id="workflow:s-code")
    assert row.source == ScheduleSource.CODE and row.workspace.slug == "default"
    with django_assert_num_queries(1):  # a worker start with nothing changed: no write
        assert firing.reconcile() == 0
    schedules.pause("workflow:s-code")  # a code cron can be paused, not deleted
    with pytest.raises(ScheduleError, match="in the code"):
        schedules.delete("workflow:s-code")
    code_cron("s-code", ["0 3 * * *"])
    assert firing.reconcile() == 1
    row.refresh_from_db()
    assert row.entries == ["0 3 * * *"] and row.paused and row.next_fire_at is None
    schedules.resume("workflow:s-code")
    registry.unregister("s-code")  # cron= removed from the code: its slots stop
    assert firing.reconcile() == 1
    assert not Schedule.objects.filter(schedule_id="workflow:s-code").exists()


def test_a_code_cron_run_gets_the_documented_event(code_cron):
    code_cron("s-code-event", "TZ=Europe/Paris 0 12 * * 1-5")
    firing.reconcile()
    row = Schedule.objects.get(schedule_id="workflow:s-code-event")
    firing.fire_due(100, now=row.next_fire_at)
    event = WorkflowRun.objects.select_related("event").get(workflow_id="s-code-event").event
    assert event.data == {
        "workflow_id": "s-code-event",
        "cron": "TZ=Europe/Paris 0 12 * * 1-5",
        "scheduled_at": cron.to_ms(row.next_fire_at),
    }


# --- list_schedules and the admin ---------------------------------------------------------
def test_list_schedules_shows_database_and_code_schedules_with_their_next_fire_time(code_cron):
    code_cron("s-listed", "0 2 * * *")  # not reconciled yet: listed from the code
    row = schedules.create("nightly", workflow="s-target", cron="30 1 * * *")
    out = StringIO()
    call_command("list_schedules", stdout=out)
    text = out.getvalue()
    assert "nightly" in text and row.next_fire_at.strftime("%Y-%m-%d %H:%M:%S") in text
    assert "workflow:s-listed" in text and " 02:00:00 " in text and "code" in text


def test_the_admin_page_is_staff_only_and_each_action_needs_its_permission(client):
    row = schedules.create("adm", workflow="s-target", cron="0 2 * * *")
    changelist = reverse("admin:workflows_schedule_changelist")
    assert client.get(changelist).status_code == 302  # not logged in: to the login page
    user = User.objects.create_user("op", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_schedule"))
    client.force_login(user)
    page = client.get(changelist).content.decode()
    assert "adm" in page and "pause_schedules" not in page and "trigger_schedules" not in page
    client.post(changelist, {"action": "pause_schedules", "_selected_action": [row.pk]})
    assert not Schedule.objects.get(pk=row.pk).paused  # refused without the permission
    for codename in ("pause_schedule", "trigger_schedule"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    page = client.get(changelist).content.decode()
    assert "pause_schedules" in page and "resume_schedules" not in page
    client.post(changelist, {"action": "pause_schedules", "_selected_action": [row.pk]})
    assert Schedule.objects.get(pk=row.pk).paused
    client.post(
        changelist,
        {"action": "trigger_schedules", "_selected_action": [row.pk], "confirmed": "yes"},
    )
    run = WorkflowRun.objects.get()
    detail = client.get(reverse("admin:workflows_schedule_change", args=[row.pk])).content.decode()
    assert str(run.pk)[:8] in detail and "next fire at" in detail.lower()
    assert Counter(Schedule.objects.values_list("paused", flat=True)) == {True: 1}
