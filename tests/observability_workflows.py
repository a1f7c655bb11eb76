"""Test workflows for traces, metrics, signals and logs (tests/test_observability*.py).

With ``WORKFLOWS_TEST_SPAN_FILE`` set (a worker process started by a test), this module
configures an OpenTelemetry SDK whose spans are appended to that file, one JSON object a
line, as each span ends: the test reads what the real worker traced.
"""

import json
import os

from workflows import NonRetriableError, workflow


def _flaky(ctx) -> str:
    """Fails on the first try, succeeds on the second (in whichever process runs it)."""
    if ctx.attempt == 0:
        raise RuntimeError("flaky try 1")
    return "ok"


@workflow(id="obs-flow", trigger="obs/go", retries=2)
def obs_flow(ctx):
    """A step, a failing try, a sleep, an event sent, an invoked child."""
    ctx.logger.info("obs-flow begins")
    first = ctx.step.run("first", lambda: {"n": ctx.event.data.get("n", 1)})
    ctx.step.run("flaky", _flaky, ctx)
    ctx.step.sleep("nap", float(ctx.event.data.get("nap", 0.01)))
    ctx.step.send_event("tell", name="obs/told", data={"from": ctx.run_id})
    child = ctx.step.invoke("child", workflow="obs-child", data={"n": first["n"]})
    ctx.logger.info("obs-flow ends")
    return {"child": child}


@workflow(id="obs-child", trigger=None)
def obs_child(ctx):
    """Invoked by ``obs-flow``."""
    return ctx.step.run("double", lambda: ctx.event.data["n"] * 2)


@workflow(id="obs-told", trigger="obs/told")
def obs_told(ctx):
    """Started by the event ``obs-flow`` sends."""
    return ctx.step.run("hear", lambda: "heard")


@workflow(id="obs-fail", trigger="obs/fail", retries=0)
def obs_fail(ctx):
    """Fails for good at its one step."""
    ctx.step.run("boom", _boom)


def _boom() -> None:
    raise NonRetriableError("boom for good")


@workflow(id="obs-wait", trigger="obs/wait")
def obs_wait(ctx):
    """Waits for an event that never comes (a run that stays active)."""
    ctx.step.wait_for_event("never", event="obs/never", timeout="1d")


def _configure_file_exporter(path: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class JsonLinesExporter(SpanExporter):
        """Appends each span to ``path``: small appends, so forked pool processes can share it."""

        def export(self, spans):
            lines = []
            for span in spans:
                parent = span.parent
                lines.append(
                    json.dumps(
                        {
                            "name": span.name,
                            "trace_id": f"{span.context.trace_id:032x}",
                            "span_id": f"{span.context.span_id:016x}",
                            "parent_id": f"{parent.span_id:016x}" if parent else None,
                            "attributes": dict(span.attributes or {}),
                            "status": span.status.status_code.name,
                            "events": [event.name for event in span.events],
                            "pid": os.getpid(),
                        }
                    )
                )
            with open(path, "a") as handle:
                handle.write("".join(line + "\n" for line in lines))
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter()))
    trace.set_tracer_provider(provider)


def _record_signals(path: str) -> None:
    from workflows import signals

    def heard(signal, sender, run, step=None, **_):
        name = next(n for n in ("run_started", "run_finished", "step_finished")
                    if getattr(signals, n) is signal)  # fmt: skip
        line = {"signal": name, "sender": sender, "run_id": str(run.pk), "status": run.status}
        if step is not None:
            line.update(step_id=step.step_id, step_status=step.status)
        with open(path, "a") as handle:
            handle.write(json.dumps(line) + "\n")

    for signal in (signals.run_started, signals.run_finished, signals.step_finished):
        signal.connect(heard, weak=False)


if os.environ.get("WORKFLOWS_TEST_SPAN_FILE"):
    _configure_file_exporter(os.environ["WORKFLOWS_TEST_SPAN_FILE"])
if os.environ.get("WORKFLOWS_TEST_SIGNAL_FILE"):
    _record_signals(os.environ["WORKFLOWS_TEST_SIGNAL_FILE"])
