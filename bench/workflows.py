"""The workflows the benchmark runs on this project's engine (ids prefixed ``bench-``).

Their step bodies do the same work as the Celery and DBOS peers' (:mod:`bench.marks`).
"""

from bench import marks
from workflows import workflow


def _identity(i: int) -> int:
    return i


@workflow(id="bench-steps", trigger="bench/steps.requested", retries=0)
def steps(ctx):
    """W1: ``n`` trivial steps one after another."""
    for i in range(ctx.event.data["n"]):
        ctx.step.run("s", _identity, i)
    return {"n": ctx.event.data["n"]}


@workflow(id="bench-fanout", trigger="bench/fanout.requested", retries=0)
def fanout(ctx):
    """W2: emit ``n`` events, each triggering ``bench-leaf``, in one ``send_event`` step."""
    label, n = ctx.event.data["label"], ctx.event.data["n"]
    ctx.step.send_event(
        "fan-out",
        events=[{"name": "bench/leaf", "data": {"label": label, "k": k}} for k in range(n)],
    )


@workflow(id="bench-leaf", trigger=["bench/leaf", "bench/deferred"], retries=0)
def leaf(ctx):
    """W2 and W4: one step that writes one row."""
    data = ctx.event.data
    ctx.step.run("mark", marks.mark, data["label"], data["k"])


@workflow(id="bench-latency", trigger="bench/latency", retries=0)
def latency(ctx):
    """W3 (and worker warm-up): the first step's body notifies when it starts."""
    ctx.step.run("start", marks.notify, ctx.event.data["channel"])


@workflow(id="bench-park", trigger="bench/park", retries=0)
def park(ctx):
    """W5: park the run in a long sleep (no worker is held)."""
    ctx.step.sleep("park", 3600)
