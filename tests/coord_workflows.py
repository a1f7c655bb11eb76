"""Test workflows for invoke, wait_for_event, parallel steps, cancellation and failure handlers."""

import functools
import os
import time

from tests.testapp.workflows import write_ledger
from workflows import NonRetriableError, StepError, workflow


@workflow(id="c-wait", trigger="coord/order.created")
def wait_for_payment(ctx):
    """Wait for the order's payment (matched on data.orderId), or time out."""
    data = ctx.event.data
    ctx.step.run("ready", write_ledger, ctx, "ready")
    paid = ctx.step.wait_for_event(
        "paid", event="coord/order.paid", match="data.orderId", timeout=data.get("timeout", 60)
    )
    ctx.step.run("after", write_ledger, ctx, "after")
    return {"paid": paid.data if paid else None, "event_id": paid.id if paid else None}


@workflow(id="c-wait-if", trigger="coord/big-order.created")
def wait_for_big_payment(ctx):
    """Wait with a CEL condition, as Inngest users write it."""
    paid = ctx.step.wait_for_event(
        "paid",
        event="coord/order.paid",
        if_="async.data.orderId == event.data.orderId && async.data.amount >= 100",
        timeout=ctx.event.data.get("timeout", 60),
    )
    return {"amount": paid.data["amount"] if paid else None}


def double(ctx, value: int, fail: bool) -> int:
    """A child step: record, then return twice ``value`` (or fail for good)."""
    write_ledger(ctx, "double")
    if fail:
        raise NonRetriableError(f"cannot double {value}")
    return value * 2


@workflow(id="c-child", trigger=None)
def child(ctx):
    """Started only by step.invoke."""
    data = ctx.event.data
    if data.get("sleep"):
        ctx.step.sleep("pause", data["sleep"])
    return {"doubled": ctx.step.run("double", double, ctx, data["value"], data.get("fail", False))}


@workflow(id="c-parent", trigger="coord/parent")
def parent(ctx):
    """Invoke c-child (or an unknown workflow) and report what came back."""
    data = ctx.event.data
    try:
        result = ctx.step.invoke(
            "call",
            workflow=data.get("target", child),
            data={"value": data.get("value", 21), **data.get("child", {})},
            timeout=data.get("timeout"),
        )
    except StepError as exc:
        return {"error": exc.error.get("type"), "message": str(exc)}
    ctx.step.run("after", write_ledger, ctx, "after")
    return {"result": result}


def branch_body(ctx, index: int, seconds: float, fail_index: int | None) -> dict:
    """A parallel branch: record which process ran it and when."""
    started = time.time()
    if seconds:
        time.sleep(seconds)
    write_ledger(ctx, f"branch-{index}")
    if index == fail_index:
        raise ValueError(f"branch {index} broke")
    return {"index": index, "pid": os.getpid(), "start": started, "end": time.time()}


@workflow(id="c-parallel", trigger="coord/parallel", retries=1)
def fan(ctx):
    """``n`` branches of ``seconds`` each, then one more step."""
    data = ctx.event.data
    ctx.step.run("before", write_ledger, ctx, "before")
    branches = [
        functools.partial(branch_body, ctx, index, data.get("seconds", 0), data.get("fail"))
        for index in range(data.get("n", 3))
    ]
    try:
        results = ctx.step.parallel("fan", branches)
    except StepError as exc:
        return {"error": str(exc)}
    ctx.step.run("after", write_ledger, ctx, "after")
    return {"results": results}


@workflow(
    id="c-cancellable",
    trigger="coord/subscription.started",
    cancel_on=[{"event": "coord/subscription.ended", "match": "data.userId"}],
)
def cancellable(ctx):
    """Step, long sleep, step, with a deferred reminder: cancelled by a matching event."""
    data = ctx.event.data
    ctx.step.run("first", write_ledger, ctx, "first", data.get("step_seconds", 0))
    ctx.step.send_event(
        "reminder",
        name="coord/reminder",
        data={"userId": data["userId"]},
        ts=int(time.time() * 1000) + 60_000,
    )
    ctx.step.sleep("wait", data.get("sleep", 60))
    ctx.step.run("second", write_ledger, ctx, "second")
    return {"done": True}


@workflow(id="c-slow", trigger="coord/slow", timeouts={"finish": "2s"})
def slow(ctx):
    """Runs longer than its finish timeout allows."""
    ctx.step.run("first", write_ledger, ctx, "first")
    ctx.step.sleep("long", 30)
    ctx.step.run("never", write_ledger, ctx, "never")


def record_failure(ctx):
    """The failure handler of c-doomed: a durable run with a step."""
    data = ctx.event.data
    ctx.step.run("note", write_ledger, ctx, f"handled {data['run_id']}")
    return {"failed_run": data["run_id"], "error": data["error"]["message"]}


@workflow(id="c-doomed", trigger="coord/doomed", retries=0, on_failure=record_failure)
def doomed(ctx):
    """Fails for good at its only step."""
    ctx.step.run("boom", double, ctx, 1, True)
