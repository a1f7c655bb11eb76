"""Observability across real worker processes: spans exported by the worker to a file,
signals heard in the worker, and GET /metrics counting the work of every worker.

The workers load ``tests.observability_workflows``, which (given the environment
variables below) configures an OpenTelemetry SDK that appends each span to a file, and
a receiver of every ``workflows.signals`` signal that appends to another.
"""

import json
import os
import tempfile
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

import eventbus
from eventbus import tracing
from tests.conftest import wait_until
from workflows import tally
from workflows.models import RunStatus, WorkflowRun

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture(autouse=True)
def no_counts_of_this_process():
    """The scrapes below flush this process's counts too: none from earlier tests."""
    tally.forget()


@pytest.fixture
def files():
    made = []

    def make(prefix: str) -> Path:
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=".jsonl")
        os.close(handle)
        made.append(Path(name))
        return made[-1]

    yield make
    for path in made:
        path.unlink(missing_ok=True)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _done(workflow_id: str, count: int = 1):
    runs = WorkflowRun.objects.filter(workflow_id=workflow_id, status=RunStatus.COMPLETED)
    return lambda: runs.count() == count


def test_a_worker_traces_runs_across_sleeps_and_workers_in_the_senders_trace(start_worker, files):
    spans_file = files("spans-")
    start_worker(env={"WORKFLOWS_TEST_SPAN_FILE": str(spans_file)})
    start_worker(env={"WORKFLOWS_TEST_SPAN_FILE": str(spans_file)})
    with tracing.incoming({"traceparent": TRACEPARENT}):
        eventbus.send("obs/go", {"n": 2, "nap": 1.5})
    for workflow_id in ("obs-flow", "obs-child", "obs-told"):
        wait_until(_done(workflow_id), timeout=90, what=f"{workflow_id} to complete")
    flow = WorkflowRun.objects.get(workflow_id="obs-flow")

    def spans():
        # A run's span ends (and is written) just after the run is stored as completed:
        # wait for the last execution of obs-flow's span, not only for the three runs.
        found = _lines(spans_file)
        runs = [s for s in found if s["name"] == "workflows.run"]
        ended = any(
            s["attributes"]["workflows.workflow_id"] == "obs-flow"
            and s["attributes"].get("workflows.outcome") == "completed"
            for s in runs
        )
        three = len({s["attributes"]["workflows.workflow_id"] for s in runs}) == 3
        return found if three and ended else []

    found = wait_until(spans, timeout=30, what="the spans of the three runs")
    assert all(span["pid"] != os.getpid() for span in found)  # made by the workers
    runs = [s for s in found if s["name"] == "workflows.run"]
    flow_runs = [s for s in runs if s["attributes"]["workflows.workflow_id"] == "obs-flow"]
    # Each execution (before the retry, after it, after the sleep, after the child)
    # belongs to the trace the sender was in.
    assert len(flow_runs) == 4
    assert {s["trace_id"] for s in runs} == {TRACE_ID}
    assert [s["attributes"]["workflows.outcome"] for s in flow_runs][-1] == "completed"
    assert {s["attributes"]["workflows.run_id"] for s in flow_runs} == {str(flow.pk)}
    flow_ids = {s["span_id"] for s in flow_runs}
    for other in (s for s in runs if s not in flow_runs):
        assert other["parent_id"] in flow_ids  # started by a step of obs-flow
    steps = [s for s in found if s["name"] == "workflows.step" and s["parent_id"] in flow_ids]
    assert sorted(s["attributes"]["workflows.step_id"] for s in steps) == sorted(
        ["first", "flaky", "flaky", "nap", "tell", "child"]
    )
    failed = [s for s in steps if s["status"] == "ERROR"]
    assert [(s["attributes"]["workflows.step_id"], s["events"]) for s in failed] == [
        ("flaky", ["exception"])
    ]


def _scrape(client) -> dict[tuple[str, tuple], float]:
    found = {}
    reply = client.get("/metrics")
    assert reply.status_code == 200
    for family in text_string_to_metric_families(reply.content.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_count_the_work_of_every_worker_and_signals_fire_once_there(
    start_worker, files, client
):
    signal_file = files("signals-")
    env = {"WORKFLOWS_TEST_SIGNAL_FILE": str(signal_file)}
    first = start_worker(env=env)
    start_worker(env=env)
    client.force_login(User.objects.create_user("ops", is_staff=True))
    eventbus.send_batch([{"name": "obs/told", "data": {"i": i}} for i in range(8)])
    wait_until(_done("obs-told", 8), timeout=90, what="the eight runs")

    completed = (
        "workflows_runs_finished_total",
        (("status", "completed"), ("workflow_id", "obs-told")),
    )
    steps = ("workflows_steps_total", (("kind", "run"), ("status", "completed")))
    # Each pool process adds its counts to the database within METRICS_FLUSH_SECONDS.
    wait_until(
        lambda: _scrape(client).get(completed) == 8 and _scrape(client).get(steps) == 8,
        timeout=30,
        what="the counts of all eight runs in /metrics",
    )
    heard = _lines(signal_file)
    quiet_end = connection.vendor == "postgresql"
    pids = {line["run_id"] for line in heard}
    assert len(pids) == 8
    for run_id in pids:
        mine = [
            (h["signal"], h.get("step_id"), h["status"]) for h in heard if h["run_id"] == run_id
        ]
        # In the order they happened: one pool process sent all three.
        assert mine == [
            ("run_started", None, "running"),
            # On PostgreSQL its last step's memo was stored with the run's end, in one
            # commit; elsewhere, in a commit of its own before the end.
            ("step_finished", "hear", "completed" if quiet_end else "running"),
            ("run_finished", None, "completed"),
        ]
    runs = {r.pk for r in WorkflowRun.objects.all()}
    assert {str(pk) for pk in runs} == pids
    first.stop()
    # A stopped worker's counts stay: counters never go down.
    assert _scrape(client)[completed] == 8
