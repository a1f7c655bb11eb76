"""Workflows used by the test suite (found by autodiscovery: this app's workflows.py)."""

import os
import time

from workflows import NonRetriableError, RetryAfterError, StepError, workflow


def write_ledger(ctx, step: str, seconds: float = 0.0) -> dict:
    """A step body: record this execution in its own committed transaction."""
    from tests.testapp.models import LedgerEntry

    if seconds:
        time.sleep(seconds)
    LedgerEntry.objects.create(run_id=ctx.run_id, step=step, attempt=ctx.attempt, pid=os.getpid())
    return {"step": step, "pid": os.getpid()}


@workflow(id="t-steps", trigger="test/steps")
def steps(ctx):
    """``steps`` ledger steps, each taking ``step_seconds``; optional sleep in the middle."""
    data = ctx.event.data
    count = data.get("steps", 3)
    for index in range(count):
        ctx.step.run(f"s{index}", write_ledger, ctx, f"s{index}", data.get("step_seconds", 0))
        if data.get("sleep") and index == count // 2:
            ctx.step.sleep("nap", data["sleep"])
    return {"done": count}


@workflow(id="t-fanout", trigger="test/fanout")
def fanout(ctx):
    """Emit ``n`` child events now and ``deferred`` more at ``ts``."""
    data = ctx.event.data
    ctx.step.run("before", write_ledger, ctx, "before")
    for index in range(data.get("n", 2)):
        ctx.step.send_event("child", name="test/child", data={"i": index, "parent": ctx.run_id})
    deferred = data.get("deferred", 0)
    if deferred:
        ctx.step.send_event(
            "later",
            events=[
                {
                    "name": "test/child",
                    "data": {"i": 1000 + i, "parent": ctx.run_id},
                    "ts": data["ts"],
                }
                for i in range(deferred)
            ],
        )
    ctx.step.run("after", write_ledger, ctx, "after")
    return {"sent": data.get("n", 2) + deferred}


@workflow(id="t-child", trigger="test/child")
def child(ctx):
    """Triggered by ``test/child``: records when it ran relative to the event's ts."""
    ctx.step.run("work", write_ledger, ctx, "work")
    return {"late_ms": int(time.time() * 1000) - ctx.event.ts, "i": ctx.event.data["i"]}


@workflow(id="t-flaky", trigger="test/flaky", retries=3)
def flaky(ctx):
    """Fails ``fail_times`` times, then succeeds."""

    def body():
        write_ledger(ctx, "flaky")
        if ctx.attempt < ctx.event.data.get("fail_times", 1):
            raise ConnectionError(f"transient failure on try {ctx.attempt}")
        return {"attempt": ctx.attempt}

    return ctx.step.run("flaky", body)


@workflow(id="t-fails", trigger="test/fails", retries=1)
def fails(ctx):
    """A step that always fails; optionally caught by the workflow."""

    def body():
        write_ledger(ctx, "boom")
        kind = ctx.event.data.get("kind", "plain")
        if kind == "nonretriable":
            raise NonRetriableError("card declined")
        if kind == "retry_after":
            raise RetryAfterError("rate limited", 0.3) if ctx.attempt == 0 else ValueError("again")
        raise ValueError("always broken")

    try:
        ctx.step.run("boom", body)
    except StepError as exc:
        if ctx.event.data.get("catch"):
            ctx.step.run("cleanup", write_ledger, ctx, "cleanup")
            return {"caught": str(exc)}
        raise
    return {"unreachable": True}


@workflow(id="t-loop", trigger="test/loop")
def loop(ctx):
    """The same step id in a loop: each repeat keeps its own memo."""
    total = 0
    for index in range(ctx.event.data.get("n", 3)):
        total += ctx.step.run("add", lambda i=index: i)
    return {"total": total}


@workflow(id="t-shape", trigger="test/shape")
def shape(ctx):
    """Its shape depends on a module flag, to provoke non-determinism in tests."""
    if SHAPE["sleep_first"]:
        ctx.step.sleep("first", 0)
    else:
        ctx.step.run("first", lambda: 1)
    return {"ok": True}


SHAPE = {"sleep_first": False}


@workflow(id="t-sleepy", trigger="test/sleepy")
def sleepy(ctx):
    """Sleeps (seconds or until a Unix ms time), then writes the ledger."""
    data = ctx.event.data
    if "until_ms" in data:
        ctx.step.sleep_until("wait", data["until_ms"])
    else:
        ctx.step.sleep("wait", data.get("seconds", 1))
    ctx.step.run("after", write_ledger, ctx, "after")
    return {"woke_ms": int(time.time() * 1000)}


@workflow(id="t-wild", trigger=["test/wild/*", "test/exact"])
def wild(ctx):
    """Triggered by a wildcard and an exact name."""
    return {"name": ctx.event.name}
