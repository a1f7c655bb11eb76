"""Observability in-process: spans (SDK in-memory exporter), GET /metrics, signals, logs.

The same promises across a real worker process: tests/test_observability_worker.py.
"""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connection, transaction
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

import eventbus
from eventbus import bus
from eventbus.models import Event
from workflows import lifecycle, retention, signals, tally
from workflows.models import MetricTally, RunStatus, WorkflowRun
from workflows.testing import drain, no_broker

ROOT = Path(__file__).resolve().parent.parent
_exporter = InMemorySpanExporter()


@pytest.fixture
def spans():
    """The spans this test makes, from a global SDK provider (set once per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    _exporter.clear()
    yield _exporter
    _exporter.clear()


@pytest.fixture(autouse=True)
def fresh_counts():
    """No unflushed counts left over from an earlier test of this process."""
    tally.forget()


def _named(exporter, name):
    return [span for span in exporter.get_finished_spans() if span.name == name]


def _runs_of(exporter, workflow_id):
    return [
        span
        for span in _named(exporter, "workflows.run")
        if span.attributes["workflows.workflow_id"] == workflow_id
    ]


# --- traces ---------------------------------------------------------------------------
@pytest.mark.django_db
def test_runs_belong_to_the_senders_trace_and_steps_that_execute_have_spans(spans):
    tracer = trace.get_tracer("app")
    with no_broker(), tracer.start_as_current_span("request") as request:
        eventbus.send("obs/go", {"n": 3})
    drain(skip_time=True)
    trace_id = request.get_span_context().trace_id
    (send,) = _named(spans, "workflows.send")
    assert send.parent.span_id == request.get_span_context().span_id
    assert send.attributes["workflows.event_name"] == "obs/go"
    engine_spans = [s for s in spans.get_finished_spans() if s.name.startswith("workflows.")]
    assert {s.instrumentation_scope.name for s in engine_spans} == {"workflows"}

    run = WorkflowRun.objects.get(workflow_id="obs-flow")
    assert run.status == RunStatus.COMPLETED
    executions = _runs_of(spans, "obs-flow")
    # First execution, after the retry's backoff, after the sleep, after the child.
    assert len(executions) == 4
    for span in executions:
        assert span.context.trace_id == trace_id
        assert span.parent.span_id == send.context.span_id  # a resumed run joins it too
        assert span.attributes["workflows.run_id"] == str(run.pk)
        assert span.attributes["workflows.workspace"] == "default"
    outcomes = [span.attributes["workflows.outcome"] for span in executions]
    assert outcomes == ["suspended", "suspended", "suspended", "completed"]

    steps = [s for s in _named(spans, "workflows.step") if s.parent.span_id in
             {e.context.span_id for e in executions}]  # fmt: skip
    # Replayed memos make no span: each step once, the flaky one once per try.
    assert sorted(s.attributes["workflows.step_id"] for s in steps) == sorted(
        ["first", "flaky", "flaky", "nap", "tell", "child"]
    )
    flaky = sorted(
        (s for s in steps if s.attributes["workflows.step_id"] == "flaky"),
        key=lambda s: s.attributes["workflows.attempt"],
    )
    assert [s.attributes["workflows.attempt"] for s in flaky] == [0, 1]
    assert flaky[0].status.status_code == trace.StatusCode.ERROR
    assert [event.name for event in flaky[0].events] == ["exception"]
    assert flaky[0].events[0].attributes["exception.message"] == "flaky try 1"
    assert flaky[1].status.status_code == trace.StatusCode.UNSET
    kinds = {s.attributes["workflows.step_id"]: s.attributes["workflows.step_kind"] for s in steps}
    assert kinds == {
        "first": "run", "flaky": "run", "nap": "sleep", "tell": "send_event", "child": "invoke",
    }  # fmt: skip

    # The runs it started continue its trace, under the execution that started them.
    (child,) = _runs_of(spans, "obs-child")
    (told,) = _runs_of(spans, "obs-told")
    starters = {e.context.span_id for e in executions}
    for started in (child, told):
        assert started.context.trace_id == trace_id
        assert started.parent.span_id in starters


@pytest.mark.django_db
def test_a_failed_run_and_its_failing_step_have_error_status(spans):
    with no_broker():
        eventbus.send("obs/fail", {})
    drain(skip_time=True)
    (run,) = _runs_of(spans, "obs-fail")
    assert run.attributes["workflows.outcome"] == "failed"
    assert run.status.status_code == trace.StatusCode.ERROR
    (step,) = _named(spans, "workflows.step")
    assert step.status.status_code == trace.StatusCode.ERROR
    assert step.events[0].attributes["exception.type"].endswith("NonRetriableError")


@pytest.mark.django_db
def test_a_deferred_event_keeps_the_trace_of_its_send(spans):
    tracer = trace.get_tracer("app")
    with no_broker(), tracer.start_as_current_span("scheduler") as root:
        event_id = eventbus.send("obs/told", {}, ts=bus.now_ms() + 86_400_000)
    event = Event.objects.get(pk=event_id)
    assert event.status == "scheduled"
    assert event.trace_context["traceparent"].split("-")[1] == f"{root.context.trace_id:032x}"
    drain(skip_time=True)  # emitted "a day later" by the dispatcher
    (run,) = _runs_of(spans, "obs-told")
    assert run.context.trace_id == root.context.trace_id


@pytest.mark.django_db
def test_the_event_apis_traceparent_header_is_the_runs_trace(client, spans):
    key = eventbus.create_event_key(None, name="t")[1]
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with no_broker():
        reply = client.post(
            f"/e/{key}",
            json.dumps({"name": "obs/told", "data": {}}),
            content_type="application/json",
            headers={"traceparent": parent},
        )
    assert reply.status_code == 200
    event = Event.objects.get(pk=reply.json()["ids"][0])
    assert event.trace_context["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    drain(skip_time=True)
    (run,) = _runs_of(spans, "obs-told")
    assert f"{run.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    (send,) = _named(spans, "workflows.send")
    assert f"{send.parent.span_id:016x}" == "b7ad6b7169203331"


#: Runs a workflow with ``opentelemetry`` unimportable; prints what got imported.
_WITHOUT_OTEL = r"""
import json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
import django
django.setup()
import eventbus
from eventbus import tracing
from workflows.models import WorkflowRun
from workflows.testing import drain, no_broker
with no_broker():
    eventbus.send("obs/go", {"n": 2})
drain(skip_time=True)
statuses = sorted(WorkflowRun.objects.values_list("status", flat=True))
print(json.dumps({
    "enabled": tracing.ENABLED,
    "statuses": statuses,
    "otel": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
}))
"""


def _script(script: str) -> dict:
    """Run ``script`` in a new Python process on the test database; its last line (JSON)."""
    env = dict(os.environ)
    env.pop("WORKFLOWS_TEST_SPAN_FILE", None)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        WORKFLOWS_TEST_DATABASE_NAME=str(connection.settings_dict["NAME"]),
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.django_db(transaction=True)
def test_without_opentelemetry_nothing_of_it_is_imported_and_runs_work():
    found = _script(_WITHOUT_OTEL)
    assert found == {"enabled": False, "statuses": ["completed"] * 3, "otel": []}


#: Runs a workflow with the OpenTelemetry API but no provider set, then sets one.
_API_ONLY = r"""
import json
import django
django.setup()
import eventbus
from eventbus import tracing
from eventbus.models import Event
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from workflows import telemetry
from workflows.models import WorkflowRun
from workflows.testing import drain, no_broker
parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
found = {"recording": tracing.recording()}
with tracing.incoming({"traceparent": parent}):
    with telemetry.step_span("s", "run", 0) as span:
        found["step_span"] = repr(span)
        found["carrier"] = tracing.carrier()["traceparent"][:36]
    with no_broker():
        eventbus.send("obs/go", {"n": 2})
drain(skip_time=True)
found["statuses"] = sorted(WorkflowRun.objects.values_list("status", flat=True))
found["told"] = Event.objects.get(name="obs/told").trace_context["traceparent"][:36]
trace.set_tracer_provider(TracerProvider())
found["recording_after"] = tracing.recording()
with telemetry.step_span("s", "run", 0) as span:
    found["step_span_after"] = type(span).__name__
print(json.dumps(found))
"""


@pytest.mark.django_db(transaction=True)
def test_without_a_tracer_provider_steps_make_no_spans_and_the_trace_carries_on():
    """The API alone records nothing: the steps skip their spans (a cost per step), yet
    what a run sends still carries the sender's trace; a provider set later is used."""
    found = _script(_API_ONLY)
    trace_id = "00-0af7651916cd43dd8448eb211c80319c-"
    assert found == {
        "recording": False,
        "step_span": "None",
        "carrier": trace_id,
        "statuses": ["completed"] * 3,
        "told": trace_id,
        "recording_after": True,
        "step_span_after": "_Span",
    }


# --- signals --------------------------------------------------------------------------
@pytest.fixture
def heard():
    """Every workflows signal received: (signal, sender, run id, step id, step status)."""
    got: list[tuple] = []

    def on_run(signal, sender, run, **_):
        got.append((signal, sender, str(run.pk), None, run.status))

    def on_step(signal, sender, run, step, **_):
        got.append((signal, sender, str(run.pk), step.step_id, step.status))

    receivers = [(signals.run_started, on_run), (signals.run_finished, on_run)]
    receivers.append((signals.step_finished, on_step))
    for signal, receiver in receivers:
        signal.connect(receiver)
    yield got
    for signal, receiver in receivers:
        signal.disconnect(receiver)


@pytest.mark.django_db(transaction=True)
def test_signals_are_sent_once_per_event_of_a_runs_life(heard):
    with no_broker():
        eventbus.send("obs/go", {"n": 1})
    drain(skip_time=True)
    flow = WorkflowRun.objects.get(workflow_id="obs-flow")
    mine = [entry for entry in heard if entry[2] == str(flow.pk)]
    started = [e for e in mine if e[0] is signals.run_started]
    finished = [e for e in mine if e[0] is signals.run_finished]
    assert [(e[1], e[4]) for e in started] == [("obs-flow", "running")]
    assert [(e[1], e[4]) for e in finished] == [("obs-flow", "completed")]
    steps = [(e[3], e[4]) for e in mine if e[0] is signals.step_finished]
    assert steps == [
        ("first", "completed"),
        ("flaky", "retrying"),
        ("flaky", "completed"),
        ("nap", "sleeping"),
        ("tell", "completed"),
        ("child", "waiting"),
    ]
    # Each run of the trace: started once, finished once.
    for workflow_id in ("obs-child", "obs-told"):
        run = WorkflowRun.objects.get(workflow_id=workflow_id)
        ends = [e[0] for e in heard if e[2] == str(run.pk) and e[3] is None]
        assert ends == [signals.run_started, signals.run_finished]


@pytest.mark.django_db(transaction=True)
def test_signals_wait_for_the_commit_and_a_rolled_back_change_sends_none(heard):
    with no_broker():
        eventbus.send("obs/wait", {})
    drain(skip_time=True)
    run = WorkflowRun.objects.get(workflow_id="obs-wait")
    heard.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        assert lifecycle.cancel(run.pk, reason="tried")
        raise RuntimeError("rolled back")
    assert heard == []
    with transaction.atomic():
        assert lifecycle.cancel(run.pk, reason="for real")
        assert heard == []  # not before the commit
    assert [(e[0], e[4]) for e in heard] == [(signals.run_finished, "cancelled")]


@pytest.mark.django_db(transaction=True)
def test_a_receiver_that_raises_is_logged_and_never_breaks_the_run(caplog):
    def broken(**_):
        raise ValueError("receiver bug")

    signals.step_finished.connect(broken)
    signals.run_finished.connect(broken)
    try:
        with no_broker(), caplog.at_level(logging.ERROR, logger="workflows.signals"):
            eventbus.send("obs/told", {})
            drain(skip_time=True)
    finally:
        signals.step_finished.disconnect(broken)
        signals.run_finished.disconnect(broken)
    run = WorkflowRun.objects.get(workflow_id="obs-told")
    assert run.status == RunStatus.COMPLETED and run.output == "heard"
    errors = [r for r in caplog.records if r.name == "workflows.signals"]
    assert len(errors) == 2  # the step's and the run's
    assert all("receiver bug" in r.getMessage() and r.run_id == str(run.pk) for r in errors)


# --- metrics --------------------------------------------------------------------------
def _scrape(client) -> dict[tuple[str, tuple], float]:
    reply = client.get("/metrics")
    assert reply.status_code == 200
    assert reply["Content-Type"].startswith("text/plain; version=0.0.4")
    found = {}
    for family in text_string_to_metric_families(reply.content.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def staff_client(client):
    client.force_login(User.objects.create_user("ops", is_staff=True))
    return client


@pytest.mark.django_db
def test_metrics_are_staff_only_unless_public(client, settings):
    reply = client.get("/metrics")
    assert reply.status_code == 302 and reply["Location"] == "/admin/login/?next=/metrics"
    client.force_login(User.objects.create_user("someone"))
    assert client.get("/metrics").status_code == 403
    client.logout()
    settings.WORKFLOWS = {**settings.WORKFLOWS, "METRICS_TOKEN": "s3cret"}
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 302
    settings.WORKFLOWS = {**settings.WORKFLOWS, "METRICS_PUBLIC": True}
    assert client.get("/metrics").status_code == 200
    assert client.post("/metrics").status_code == 405


@pytest.mark.django_db(transaction=True)
def test_metrics_count_runs_and_steps_and_never_decrease_across_purge_runs(staff_client):
    with no_broker():
        eventbus.send("obs/go", {"n": 1})
        eventbus.send("obs/fail", {})
    drain(skip_time=True)
    tally.flush()
    found = _scrape(staff_client)
    finished = "workflows_runs_finished_total"
    assert found[(finished, (("status", "completed"), ("workflow_id", "obs-flow")))] == 1
    assert found[(finished, (("status", "failed"), ("workflow_id", "obs-fail")))] == 1
    assert found[(finished, (("status", "completed"), ("workflow_id", "obs-child")))] == 1
    steps = "workflows_steps_total"
    assert found[(steps, (("kind", "run"), ("status", "retrying")))] == 1
    assert found[(steps, (("kind", "run"), ("status", "failed")))] == 1
    # first, flaky, double, hear
    assert found[(steps, (("kind", "run"), ("status", "completed")))] == 4
    assert found[(steps, (("kind", "invoke"), ("status", "waiting")))] == 1
    runs_of_kind = found[("workflows_step_duration_seconds_count", (("kind", "run"),))]
    assert runs_of_kind == 6
    assert found[("workflows_step_duration_seconds_bucket", (("kind", "run"), ("le", "+Inf")))] == 6

    WorkflowRun.objects.update(created_at=WorkflowRun.objects.first().created_at.replace(year=2000))
    assert list(retention.purge_runs(1))[-1] == 4
    assert not WorkflowRun.objects.exists()
    after = _scrape(staff_client)
    for key, value in found.items():
        if key[0].startswith(("workflows_runs_finished", "workflows_steps", "workflows_step_")):
            assert after[key] == value, key


@pytest.mark.django_db(transaction=True)
def test_gauges_show_runs_by_status_with_paused_backlog_age_and_scheduled_events(staff_client):
    with no_broker():
        eventbus.send("obs/wait", {})
        drain(skip_time=True)
        eventbus.send("obs/told", {})  # queued: no worker takes it
        eventbus.send("obs/told", {}, ts=bus.now_ms() + 3_600_000)
    paused = WorkflowRun.objects.get(workflow_id="obs-wait")
    WorkflowRun.objects.filter(pk=paused.pk).update(status=RunStatus.PAUSED)
    with no_broker():
        eventbus.send("obs/wait", {})
    queued = WorkflowRun.objects.filter(status=RunStatus.QUEUED).order_by("created_at").first()
    WorkflowRun.objects.filter(pk=queued.pk).update(
        created_at=queued.created_at.replace(year=queued.created_at.year - 1)
    )
    found = _scrape(staff_client)
    runs = {dict(labels)["status"]: value for (name, labels), value in found.items()
            if name == "workflows_runs"}  # fmt: skip
    assert runs == {"queued": 2, "running": 0, "sleeping": 0, "waiting": 0, "paused": 1}
    assert found[("workflows_oldest_queued_run_age_seconds", ())] > 364 * 86400
    assert found[("workflows_events_scheduled", ())] == 1
    WorkflowRun.objects.filter(status=RunStatus.QUEUED).update(status=RunStatus.CANCELLED)
    assert _scrape(staff_client)[("workflows_oldest_queued_run_age_seconds", ())] == 0


# --- logs -----------------------------------------------------------------------------
@pytest.mark.django_db
def test_every_engine_log_record_of_a_run_carries_its_ids(caplog):
    with no_broker():
        eventbus.send("obs/go", {"n": 1})
        eventbus.send("obs/fail", {})
    with caplog.at_level(logging.DEBUG, logger="workflows"):
        drain(skip_time=True)
    records = [r for r in caplog.records if r.name.startswith("workflows.")]
    assert len(records) >= 4
    runs = {str(pk): wf for pk, wf in WorkflowRun.objects.values_list("pk", "workflow_id")}
    for record in records:
        assert runs[record.run_id] == record.workflow_id, record.getMessage()
    by_message = {r.getMessage().split("] ", 1)[-1]: r for r in records}
    assert not hasattr(by_message["obs-flow begins"], "step_id")
    assert by_message["obs-flow ends"].step_id == "child"  # ctx.logger: the step it is in
    retry = next(r for r in records if "retrying at" in r.getMessage())
    assert retry.step_id == "flaky"
    failed = next(r for r in records if r.name == "workflows.engine" and "failed" in r.msg)
    assert failed.workflow_id == "obs-fail" and failed.step_id == "boom"


# --- the admin dashboard -------------------------------------------------------------
@pytest.mark.django_db
def test_the_dashboard_page_shows_status_counts_failure_rate_backlog_and_slowest_steps(client):
    client.force_login(User.objects.create_superuser("admin", "a@example.com", "pw"))
    with no_broker():
        eventbus.send("obs/go", {"n": 1})
        eventbus.send("obs/fail", {})
        drain(skip_time=True)
        eventbus.send("obs/told", {})  # stays queued
    page = client.get("/admin/workflows/metrictally/")
    assert page.status_code == 200
    html = page.content.decode()
    assert '<svg id="wf-chart"' in html and 'src="http' not in html  # no CDN
    hour = html[html.index('id="wf-hour"') : html.index('id="wf-day"')]
    assert "obs-fail" in hour and "100.0%" in hour and "obs-flow" in hour
    slowest = html[html.index('id="wf-slowest"') :]
    assert "flaky" in slowest and "first" in slowest
    assert "oldest queued" in html
    client.force_login(User.objects.create_user("nobody", is_staff=True))
    assert client.get("/admin/workflows/metrictally/").status_code == 403


@pytest.mark.django_db(transaction=True)
def test_a_web_process_writes_its_counts_after_a_request(client, settings):
    """No flusher thread here (as in a web process): counts wait for the next request."""
    with no_broker():
        eventbus.send("obs/told", {})
    drain(skip_time=True)
    assert not MetricTally.objects.exists()  # nothing written in the step's path
    settings.WORKFLOWS = {**settings.WORKFLOWS, "METRICS_FLUSH_SECONDS": 0}
    client.get("/admin/login/")
    finished = MetricTally.objects.get(name="workflows_runs_finished_total")
    assert finished.value == 1 and "obs-told" in finished.labels
