"""Workflows that try to wedge a run: unstorable text, BaseExceptions, dying processes,
dates out of range (issue 11)."""

import os
import sys
from datetime import datetime, timedelta, timezone

from tests.testapp.workflows import write_ledger
from workflows import NonRetriableError, RetryAfterError, workflow

#: Text PostgreSQL's jsonb refuses (NUL) and UTF-8 cannot encode (a lone surrogate).
UNSTORABLE = "bad \x00 text \ud800 here"


class Custom(BaseException):
    """A BaseException of the user's own."""


def _raise(kind: str) -> None:
    if kind == "value":
        raise ValueError(UNSTORABLE)
    if kind == "nonretriable":
        raise NonRetriableError(UNSTORABLE)
    if kind == "exit":
        sys.exit(3)
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "custom":
        raise Custom("mine")
    if kind == "retry-nan":
        raise RetryAfterError("later", float("nan"))
    raise AssertionError(kind)


@workflow(id="w-raise", trigger="wedge/raise", retries=1)
def raise_in_step(ctx):
    """Its one step raises what the event says, after writing the ledger."""
    kind = ctx.event.data["kind"]
    ctx.step.run("boom", lambda: (write_ledger(ctx, "boom"), _raise(kind)))


@workflow(id="w-raise-body", trigger="wedge/raise-body")
def raise_in_body(ctx):
    """The workflow body itself (outside any step) raises."""
    ctx.step.run("first", write_ledger, ctx, "first")
    if ctx.event.data["kind"] == "exit":
        sys.exit(2)
    raise RuntimeError(UNSTORABLE)


@workflow(id="w-die", trigger="wedge/die", retries=1)
def die_in_step(ctx):
    """Its step kills its own process every time (as a segfault or the OOM killer would)."""
    ctx.step.run("before", write_ledger, ctx, "before")
    ctx.step.run("fatal", lambda: (write_ledger(ctx, "fatal"), os._exit(1)))


@workflow(id="w-far", trigger="wedge/far")
def sleep_out_of_range(ctx):
    """Sleeps until a time outside the years 1-9999 in UTC, or for longer than that."""
    if ctx.event.data.get("early"):
        ctx.step.sleep_until("s", datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=14))))
    else:
        ctx.step.sleep_until("s", datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))))


@workflow(id="w-runaway", trigger="wedge/runaway")
def runaway(ctx):
    """Sends its own trigger: without a pause it never stops."""
    n = ctx.event.data.get("n", 0)
    ctx.step.run("work", write_ledger, ctx, "work")
    ctx.step.send_event("again", "wedge/runaway", {"n": n + 1})


@workflow(id="w-deep", trigger="wedge/deep")
def deep(ctx):
    """Invokes itself: the chain ends at WORKFLOWS["MAX_INVOKE_DEPTH"]."""
    return 1 + ctx.step.invoke("child", workflow="w-deep", data={})


@workflow(id="w-big", trigger="wedge/big", retries=0)
def big_outputs(ctx):
    """Steps with large outputs, a sleep between them (so they are replayed), a checksum."""
    data = ctx.event.data
    sizes = []
    for index in range(data["steps"]):
        out = ctx.step.run(f"big-{index}", lambda i=index: {"blob": str(i % 10) * data["bytes"]})
        sizes.append(len(out["blob"]))
        if index == 0:
            ctx.step.sleep("nap", data.get("nap", 0.5))
    return {"sizes": sizes}


def hold_the_interpreter(seconds: float) -> float:
    """Hold the GIL for about ``seconds`` in one C call (a catastrophic regex); the time."""
    import math
    import re
    import time

    pattern = re.compile(r"(a+)+$")
    started = time.monotonic()
    pattern.match("a" * 20 + "b")
    probe = max(time.monotonic() - started, 1e-4)
    n = 20 + max(0, math.ceil(math.log(seconds / probe) / math.log(1.9)))
    started = time.monotonic()
    pattern.match("a" * n + "b")
    return time.monotonic() - started


@workflow(id="w-gil", trigger="wedge/gil", retries=0)
def holds_the_gil(ctx):
    """One step that holds the interpreter for longer than the lease."""
    return ctx.step.run(
        "hold",
        lambda: (write_ledger(ctx, "hold"), hold_the_interpreter(ctx.event.data["seconds"]))[1],
    )
