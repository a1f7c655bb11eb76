"""Nothing wedges a run (issue 11): text the database cannot store, BaseExceptions,
processes that die in a step every time, dates out of range, forged messages, purges of
replayed runs. Each class is shown in-process and by a real worker process."""

import uuid
from datetime import timedelta

import pytest
from celery import current_app
from django.utils import timezone

import eventbus
from eventbus.models import Event
from tests.conftest import wait_until
from tests.testapp.models import LedgerEntry
from workflows import doorbell, memo, retention, services, tasks, testing
from workflows.exceptions import describe, storable
from workflows.models import TERMINAL_STATUSES, RunStatus, WorkflowRun

ESCAPED = "[unstorable characters escaped]"
RAISE_KINDS = {
    # kind: (error type, tries)
    "value": ("ValueError", 2),
    "nonretriable": ("NonRetriableError", 1),
    "exit": ("SystemExit", 2),
    "interrupt": ("KeyboardInterrupt", 2),
    "custom": ("Custom", 2),
    "retry-nan": ("ValueError", 2),
}


def send_all() -> dict[str, str]:
    """One event per way of wedging a run; the event id of each."""
    sent = {f"raise-{kind}": eventbus.send("wedge/raise", {"kind": kind}) for kind in RAISE_KINDS}
    for kind in ("exit", "unstorable"):
        sent[f"body-{kind}"] = eventbus.send("wedge/raise-body", {"kind": kind})
    sent["far-early"] = eventbus.send("wedge/far", {"early": True})
    sent["far-late"] = eventbus.send("wedge/far", {})
    return sent


def run_of(event_id: str) -> WorkflowRun:
    return WorkflowRun.objects.get(event_id=event_id)


def tries(run: WorkflowRun, step: str) -> int:
    return LedgerEntry.objects.filter(run_id=str(run.pk), step=step).count()


def check_outcomes(sent: dict[str, str]) -> None:
    """Every run failed for good, with a storable error and its retries respected."""
    for kind, (error_type, count) in RAISE_KINDS.items():
        run = run_of(sent[f"raise-{kind}"])
        assert run.status == RunStatus.FAILED, (kind, run.status, run.error)
        step = run.steps.get(step_id="boom")
        assert step.error["type"] == error_type, (kind, step.error)
        assert tries(run, "boom") == count, kind
    for kind in ("value", "nonretriable"):
        message = run_of(sent[f"raise-{kind}"]).error["message"]
        assert "bad \\u0000 text \\ud800 here" in message and ESCAPED in message
    assert (
        "retry_after must be from 0 seconds to 100 years"
        in (run_of(sent["raise-retry-nan"]).steps.get().error["message"])
    )
    exited = run_of(sent["body-exit"])
    assert exited.status == RunStatus.FAILED and exited.error["type"] == "SystemExit"
    unstorable = run_of(sent["body-unstorable"])
    assert unstorable.status == RunStatus.FAILED and ESCAPED in unstorable.error["message"]
    for kind in ("far-early", "far-late"):
        run = run_of(sent[kind])
        assert run.status == RunStatus.FAILED, (kind, run.error)
        assert "is not within the years 1 to 9999 in UTC" in run.error["message"]
    # The system events built from those errors were stored too.
    failed = Event.objects.filter(name="workflows/run.failed").count()
    assert failed == WorkflowRun.objects.filter(status=RunStatus.FAILED).count()


@pytest.mark.django_db
def test_in_process_every_wedging_input_fails_its_run_for_good():
    with testing.no_broker():
        sent = send_all()
    testing.drain(skip_time=True)
    check_outcomes(sent)


def test_storable_and_describe_never_fail():
    assert storable("plain") == "plain"
    assert storable("a\x00b") == f"a\\u0000b {ESCAPED}"

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no")

    assert describe(Unprintable())["message"] == "<Unprintable whose str() raised>"


@pytest.mark.django_db(transaction=True)  # the tasks close and reopen the connection
def test_forged_messages_are_dropped_with_a_short_log_line(caplog):
    with testing.no_broker():
        run_id = WorkflowRun.objects.get(event_id=eventbus.send("test/steps", {"steps": 1})).pk
    assert tasks.execute_runs([str(uuid.uuid4())] * (doorbell.MAX_RUN_IDS + 1)) == {"invalid": 1}
    assert tasks.execute_run(12345678901234567890123456789012) == "invalid"
    assert tasks.execute_run("x" * 5_000_000) == "invalid"
    assert all(len(record.getMessage()) < 300 for record in caplog.records)
    # Any spelling of a UUID is understood (here a urn), and the run executes.
    with testing.no_broker():
        assert tasks.execute_run(f"urn:uuid:{run_id}") == "completed"
    # A forged emit_events message: too long a list, not a list, ids that are no UUID.
    assert tasks.emit_events([str(uuid.uuid4())] * (doorbell.MAX_RUN_IDS + 1)) == 0
    assert tasks.emit_events("x" * 5_000_000) == 0
    assert tasks.emit_events([123, "x" * 5_000_000, str(uuid.uuid4())]) == 0
    assert "malformed event id" in caplog.text
    # A forged fire_gates message: too long a list, not a list, scopes that are no string.
    assert tasks.fire_gates(["x"] * (doorbell.MAX_RUN_IDS + 1)) == 0
    assert tasks.fire_gates("x" * 5_000_000) == 0
    assert tasks.fire_gates([123, "x" * 5_000_000, "no-such-scope"]) == 0
    assert "malformed gate scopes" in caplog.text
    assert all(len(record.getMessage()) < 300 for record in caplog.records)


@pytest.mark.django_db
def test_purging_a_replayed_run_keeps_its_replays_as_replays():
    with testing.no_broker():
        eventbus.send("test/steps", {"steps": 1})
    testing.drain()
    original = WorkflowRun.objects.get()
    replays = [services.replay_run(original.pk) for _ in range(2)]
    testing.drain()
    WorkflowRun.objects.filter(pk=original.pk).update(created_at=timezone.now() - timedelta(days=9))

    assert list(retention.purge_runs(7)) == [1]  # was: IntegrityError, every night

    for replay in replays:
        replay.refresh_from_db()
        assert replay.is_replay and replay.replay_of_id is None
    # The event's one first run is gone; a repeated delivery still starts none anew.
    assert not WorkflowRun.objects.filter(is_replay=False).exists()


@pytest.mark.worker
def test_a_real_worker_is_never_wedged(worker):
    sent = send_all()
    sent["die"] = eventbus.send("wedge/die", {})
    every = list(sent.values())

    def all_ended():
        runs = WorkflowRun.objects.filter(event_id__in=every)
        return runs.count() == len(every) and not runs.exclude(status__in=TERMINAL_STATUSES)

    # The dying step costs two lease expiries (LEASE_SECONDS=4) and two bells.
    wait_until(all_ended, timeout=90, what=f"every run to end\n{worker.tail()}")
    check_outcomes({k: v for k, v in sent.items() if k != "die"})
    died = run_of(sent["die"])
    assert died.status == RunStatus.FAILED, (died.error, worker.tail())
    assert died.steps.get(step_id="fatal").error["type"] == "WorkerLost"
    assert "the worker died 2 times while executing step 'fatal'" in died.error["message"]
    assert tries(died, "fatal") == 2 and tries(died, "before") == 1
    assert worker.process.poll() is None  # the worker outlived all of it

    # Forged messages: a huge id list, an integer, a huge id; then real work goes on.
    current_app.send_task(doorbell.EXECUTE_RUNS, ([str(uuid.uuid4())] * 100_000,))
    current_app.send_task(doorbell.EXECUTE_RUN, (12345678901234567890123456789012,))
    current_app.send_task(doorbell.EXECUTE_RUN, ("y" * 1_000_000,))
    after = eventbus.send("test/steps", {"steps": 1})
    wait_until(lambda: run_of(after).status == RunStatus.COMPLETED, timeout=60, what=worker.tail())
    # Another pool process may finish that run before this one has read the huge list.
    wait_until(
        lambda: (
            "dropping an execute_runs message with 100000 run ids"
            in worker.log.read_text(errors="replace")
        ),
        timeout=60,
        what="the worker to drop the forged list",
    )
    assert "y" * 200 not in worker.log.read_text(errors="replace")


@pytest.mark.django_db
def test_a_resumed_run_reads_large_outputs_one_at_a_time():
    import tracemalloc

    from workflows import engine

    megabyte = 1024 * 1024
    with testing.no_broker():
        event_id = eventbus.send("wedge/big", {"steps": 12, "bytes": megabyte, "nap": 3600})
    run = run_of(event_id)
    testing.drain()  # big-0, then the sleep
    # Record eleven more large memos, as if they had been recorded before the sleep.
    first = run.steps.get(step_id="big-0")
    for index in range(1, 12):
        first.pk, first.step_id, first.position = None, f"big-{index}", index + 1
        first.key = memo.key_for(f"big-{index}")
        first.save(force_insert=True)
    WorkflowRun.objects.filter(pk=run.pk).update(wake_at=timezone.now(), due_at=timezone.now())
    run.steps.filter(step_id="nap").update(wake_at=timezone.now())
    tracemalloc.start()
    try:
        with testing.no_broker():
            assert engine.execute(run.pk) == "completed"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert run_of(event_id).output == {"sizes": [megabyte] * 12}
    # Twelve outputs of 1 MiB: holding them all would peak above 12 MiB.
    assert peak < 8 * megabyte, f"peak {peak / megabyte:.1f} MiB"


@pytest.mark.django_db
def test_a_run_cannot_store_more_than_its_output_cap():
    from django.test import override_settings

    with override_settings(WORKFLOWS={"MAX_RUN_OUTPUT_BYTES": 2_500_000}):
        with testing.no_broker():
            event_id = eventbus.send("wedge/big", {"steps": 3, "bytes": 1_000_000, "nap": 0})
        testing.drain(skip_time=True)
    run = run_of(event_id)
    assert run.status == RunStatus.FAILED
    assert [s.status for s in run.steps.filter(kind="run").order_by("position")] == [
        "completed",
        "completed",
        "failed",
    ]
    assert "over WORKFLOWS['MAX_RUN_OUTPUT_BYTES'] (2500000)" in run.error["message"]


@pytest.mark.worker
def test_a_step_that_holds_the_interpreter_past_the_lease_runs_once(start_worker):
    from django.conf import settings

    lease = settings.WORKFLOWS["LEASE_SECONDS"]
    start_worker(concurrency=1)
    other = start_worker(concurrency=1)  # would take the run over if the lease ran out
    event_id = eventbus.send("wedge/gil", {"seconds": 2.5 * lease})
    wait_until(lambda: run_of(event_id).status in TERMINAL_STATUSES, timeout=120, what=other.tail())
    run = run_of(event_id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output > lease  # the interpreter really was held past the lease
    assert tries(run, "hold") == 1  # and no other worker ran the step meanwhile


@pytest.mark.django_db
def test_admin_pages_do_not_load_outputs_they_do_not_show(admin_client):
    import tracemalloc

    with testing.no_broker():
        event_id = eventbus.send("wedge/big", {"steps": 1, "bytes": 1, "nap": 3600})
    testing.drain()
    run = run_of(event_id)
    step = run.steps.get(step_id="big-0")
    blob = {"blob": "x" * 1_000_000}
    for index in range(1, 31):  # thirty steps of 1 MB each
        step.pk, step.step_id, step.position = None, f"big-{index}", index + 1
        step.key, step.output, step.output_bytes = memo.key_for(step.step_id), blob, 1_000_010
        step.save(force_insert=True)
    pages = [
        f"/admin/workflows/workflowrun/{run.pk}/change/",
        f"/admin/workflows/workflowrun/{run.pk}/replay/",
        f"/admin/workflows/stepresult/?q={run.pk}",
    ]
    for url in pages:
        tracemalloc.start()
        try:
            response = admin_client.get(url)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == 200, url
        assert peak < 10_000_000, f"{url}: peak {peak / 1e6:.0f} MB for 30 MB of outputs"
