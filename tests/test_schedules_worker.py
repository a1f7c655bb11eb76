"""Schedules with real processes: each slot starts one run with several dispatchers.

A worker (with its dispatcher thread) and two ``run_dispatcher`` processes fire a
six-field every-second schedule from the database and a ``cron=`` of two entries
declared in code (reconciled by the processes at start-up).
"""

from collections import Counter

import pytest

from tests.conftest import Dispatcher, wait_until
from workflows import cron, schedules
from workflows.models import Schedule, ScheduleSource, WorkflowRun

pytestmark = pytest.mark.worker

#: Slots of each schedule the test waits for.
SLOTS = 8


def test_each_slot_starts_one_run_with_several_dispatchers_within_a_second(
    start_worker, monkeypatch
):
    monkeypatch.setenv("WORKFLOWS_TEST_CRON", "1")  # the processes define s-every-second
    schedules.create("db-every-second", workflow="s-target", cron="* * * * * *")
    processes = [start_worker(concurrency=2), Dispatcher().start(), Dispatcher().start()]
    try:

        def enough() -> bool:
            done = Counter(
                WorkflowRun.objects.filter(status="completed").values_list("workflow_id", flat=True)
            )
            return done["s-target"] >= SLOTS and done["s-every-second"] >= SLOTS

        wait_until(enough, timeout=90, what=f"{SLOTS} completed runs of each schedule")
    finally:
        for process in processes[1:]:
            process.stop()
    code_row = Schedule.objects.get(schedule_id="workflow:s-every-second")
    assert code_row.source == ScheduleSource.CODE  # reconciled by the processes
    logs = [process.tail() for process in processes]
    for workflow_id, prefix in (
        ("s-target", "cron:db-every-second:"),
        ("s-every-second", "cron:workflow:s-every-second:"),
    ):
        runs = list(WorkflowRun.objects.filter(workflow_id=workflow_id).select_related("event"))
        keys = Counter(run.event.idempotency_key for run in runs)
        assert all(key.startswith(prefix) for key in keys), keys
        assert set(keys.values()) == {1}, (keys, logs)  # one run per slot
        fired = sorted(run.event.data["scheduled_at"] for run in runs)
        # No slot missed while the dispatchers ran: every second, once.
        assert fired == list(range(fired[0], fired[-1] + 1000, 1000)), (fired, logs)
        lateness = [cron.to_ms(run.created_at) - run.event.data["scheduled_at"] for run in runs]
        assert min(lateness) >= 0, lateness  # never before the slot
        # Within a dispatcher pass or two; the bound leaves room for busy shared cores.
        assert max(lateness) < 2000, (lateness, logs)
        print(f"{workflow_id}: {len(runs)} slots, lateness {min(lateness)}-{max(lateness)} ms")
    # Two entries of s-every-second match each even second: one run for that instant.
    entries = Counter(
        run.event.data["cron"]
        for run in WorkflowRun.objects.filter(workflow_id="s-every-second").select_related("event")
    )
    assert set(entries) == {"* * * * * *"}, entries
