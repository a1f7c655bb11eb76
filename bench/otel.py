"""W1 with and without OpenTelemetry: what tracing costs per step.

``python -m bench.otel [--steps 100 400] [--repeat 5]`` against the database of
``DATABASE_URL`` (migrated; the example project's settings). Each mode runs in a fresh
process, executing W1 (one run of N trivial ``step.run``) in that process with
:func:`workflows.engine.execute`, as a worker would, so the figure is the engine's own
cost per step without a broker in the way:

- ``absent``: ``opentelemetry`` cannot be imported (blocked), as without the extra;
- ``api``: ``opentelemetry-api`` installed, no SDK configured (its no-op tracer);
- ``sdk``: the SDK with a batch span processor and an exporter that drops the spans.

Ms per step is the run's ``finished_at - started_at`` divided by N (W1's measure), and
the CPU time of the executing process divided by N (what tracing adds shows there, free
of the commit latency that dominates the wall figure on a busy machine); each the
median of ``--repeat`` runs in each of ``--rounds`` processes per mode, the modes taking
turns. The runs it made are deleted at the end.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODES = ("absent", "api", "sdk")

_BLOCK = """
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(name)
sys.meta_path.insert(0, _Block())
"""


def _configure_sdk() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Drop(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)


def measure(mode: str, sizes: list[int], repeat: int) -> dict[str, list[float]]:
    """In this process: ms per step of ``repeat`` W1 runs for each N."""
    if mode == "sdk":
        _configure_sdk()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")
    import django

    django.setup()
    import eventbus
    from eventbus import tracing
    from workflows import engine, registry, testing
    from workflows.models import StepResult, WorkflowRun

    traced = mode != "absent"
    assert tracing.ENABLED is traced, mode
    assert ("opentelemetry" in sys.modules) is traced, mode

    def trivial(i: int) -> int:
        return i

    def steps(ctx):  # type: ignore[no-untyped-def]
        for i in range(ctx.event.data["n"]):
            ctx.step.run("s", trivial, i)

    if "bench-otel-steps" not in {wf.id for wf in registry.all_workflows()}:
        registry.workflow(id="bench-otel-steps", trigger="bench/otel.steps", retries=0)(steps)
    figures: dict[str, list[float]] = {}
    made = []
    try:
        for n in [min(sizes), *sizes]:  # the first, smallest run warms up
            samples, cpu_samples = [], []
            for _ in range(repeat):
                with testing.no_broker():
                    eventbus.send("bench/otel.steps", {"n": n})
                run = WorkflowRun.objects.filter(workflow_id="bench-otel-steps").latest(
                    "created_at"
                )
                made.append(run.pk)
                cpu = time.process_time()
                assert engine.execute(run.pk) == "completed"
                cpu = time.process_time() - cpu
                run.refresh_from_db()
                samples.append((run.finished_at - run.started_at).total_seconds() * 1000 / n)
                cpu_samples.append(cpu * 1000 / n)
            figures[str(n)] = samples
            figures[f"cpu{n}"] = cpu_samples
    finally:
        StepResult.objects.filter(run_id__in=made).delete()
        WorkflowRun.objects.filter(pk__in=made).delete()
    figures["hooks_us"] = [_hooks_per_step()]
    return figures


def _hooks_per_step(calls: int = 200_000) -> float:
    """Microseconds the tracing hooks of one step cost here (``absent``: the price of
    having them at all): the ``step.run`` span and the span of a recording step."""
    from workflows import telemetry
    from workflows.models import StepResult

    row = StepResult(step_id="s", kind="sleep", status="completed")
    t0 = time.perf_counter()
    for _ in range(calls):
        with telemetry.step_span("s", "run", 0):
            pass
        telemetry.recorded_span(row, time.time_ns())
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    """Print W1's ms per step in each mode (each in a fresh process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--repeat", type=int, default=3, help="runs per N in each process")
    parser.add_argument("--rounds", type=int, default=5, help="processes per mode")
    args = parser.parse_args()
    # Modes take turns, round after round, so a noisy neighbour on the machine weighs
    # on each of them alike; each round of a mode is a fresh process.
    keys = [str(n) for n in args.steps] + [f"cpu{n}" for n in args.steps]
    samples: dict[str, dict[str, list[float]]] = {m: {k: [] for k in keys} for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            code = (_BLOCK if mode == "absent" else "") + (
                "from bench.otel import measure; import json; "
                f"print(json.dumps(measure({mode!r}, {args.steps!r}, {args.repeat})))"
            )
            done = subprocess.run(
                [sys.executable, "-c", "import sys\n" + code],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode:
                sys.exit(f"mode {mode} failed:\n{done.stderr[-3000:]}")
            for n, values in json.loads(done.stdout.strip().splitlines()[-1]).items():
                samples[mode].setdefault(n, []).extend(values)
    results = {m: {n: statistics.median(v) for n, v in by_n.items()} for m, by_n in samples.items()}
    base = results["absent"]
    runs = args.repeat * args.rounds
    print(f"W1, ms per step (median of {runs} runs per mode and N), engine in-process;")
    print("wall: the run's finished_at - started_at; cpu: this process's CPU time")
    labels = [f"wall N={n}" for n in args.steps] + [f"cpu N={n}" for n in args.steps]
    print(f"{'mode':8} " + " ".join(f"{label:>18}" for label in labels))
    for mode in MODES:
        cells = []
        for key in keys:
            value = results[mode][key]
            cells.append(f"{value:7.3f} ({(value / base[key] - 1) * 100:+5.1f}%)")
        print(f"{mode:8} " + " ".join(f"{cell:>18}" for cell in cells))
    hooks = " ".join(f"{mode} {results[mode]['hooks_us']:.2f} µs" for mode in MODES)
    print(f"the tracing hooks of one step, alone: {hooks}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
