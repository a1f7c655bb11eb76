"""Workflows of the chaos suite, and the emission log the suite and the concurrency tests read.

Every step body writes one ledger row in its own transaction, so the suite can tell a
body that ran twice from a memo that was replayed. ``step.invoke`` and
``step.wait_for_event`` are used when the engine has them (checked at run time, the same
way in every worker).
"""

import os
import time

from django.db import transaction

from eventbus import bus
from workflows import workflow

#: Generous: a step that fails because the chaos controller cut its database connection
#: is retried, not failed for good.
CHAOS_RETRIES = 25
#: Workers, the dispatcher and the test process set this to record every delivery.
EMISSION_LOG_ENV = "WORKFLOWS_TEST_EMISSION_LOG"


def log_emissions(events: list) -> None:
    """Subscriber: one ``EmissionLog`` row per delivered event, in the emitting transaction."""
    if os.environ.get(EMISSION_LOG_ENV) != "1" or not events:
        return
    from tests.testapp.models import EmissionLog

    now = int(time.time() * 1000)
    EmissionLog.objects.bulk_create(
        [
            EmissionLog(event_id=e.id, name=e.name, ts=e.ts, delivered_ms=now, pid=os.getpid())
            for e in events
        ]
    )


bus.subscribe(log_emissions)


def ledger(ctx, step: str, seconds: float = 0.0) -> dict:
    """A step body: record this execution in its own committed transaction."""
    from tests.testapp.models import LedgerEntry

    if seconds:
        time.sleep(seconds)
    with transaction.atomic():
        LedgerEntry.objects.create(
            run_id=ctx.run_id, step=step, attempt=ctx.attempt, pid=os.getpid()
        )
    return {"step": step, "pid": os.getpid()}


def has_step(ctx, name: str) -> bool:
    """Whether this engine offers ``ctx.step.<name>`` (invoke, wait_for_event)."""
    return callable(getattr(ctx.step, name, None))


@workflow(id="chaos-order", trigger="chaos/order", retries=CHAOS_RETRIES)
def order(ctx):
    """The mixed load: run, send_event now and deferred, sleep, invoke, wait_for_event."""
    data = ctx.event.data
    number = data["order"]
    pause = data.get("step_seconds", 0.05)
    ctx.step.run("reserve", ledger, ctx, "reserve", pause)
    ctx.step.send_event("notify", name="chaos/child", data={"order": number, "kind": "now"})
    ctx.step.send_event(
        "remind",
        name="chaos/child",
        data={"order": number, "kind": "later"},
        ts=data["later_ts"],
    )
    ctx.step.sleep("cool-off", data.get("sleep", 1.0))
    ctx.step.run("charge", ledger, ctx, "charge", pause)
    result = {"order": number}
    if data.get("invoke") and has_step(ctx, "invoke"):
        price = ctx.step.invoke("price", workflow="chaos-price", data={"order": number})
        result["price"] = price["price"]
    if data.get("wait") and has_step(ctx, "wait_for_event"):
        # The acknowledgement is emitted by this run, a few seconds after the wait begins.
        ctx.step.send_event(
            "ask-ack",
            name="chaos/ack",
            data={"order": number},
            ts=int(time.time() * 1000) + data.get("ack_after_ms", 5000),
        )
        ack = ctx.step.wait_for_event("ack", event="chaos/ack", match="data.order", timeout=30)
        result["acked"] = ack is not None
    ctx.step.run("ship", ledger, ctx, "ship", pause)
    return result


@workflow(id="chaos-child", trigger="chaos/child", retries=CHAOS_RETRIES)
def child(ctx):
    """Triggered by every ``chaos/child`` event, immediate or deferred."""
    ctx.step.run("work", ledger, ctx, "work")
    return {"order": ctx.event.data["order"], "kind": ctx.event.data["kind"]}


@workflow(id="chaos-audit", trigger="chaos/*", retries=CHAOS_RETRIES)
def audit(ctx):
    """A second subscriber of every chaos event (wildcard); no steps, so it is cheap."""
    return {"name": ctx.event.name}


@workflow(id="chaos-price", trigger=None, retries=CHAOS_RETRIES)
def price(ctx):
    """Invoked by ``chaos-order`` where the engine has ``step.invoke``."""
    ctx.step.run("quote", ledger, ctx, "quote")
    return {"price": 100 + ctx.event.data["order"] % 7}


@workflow(id="chaos-tick", trigger=None, retries=CHAOS_RETRIES)
def tick(ctx):
    """Started by the suite's schedule every 2 s: exactly one run per slot, under faults."""
    ctx.step.run("tick", ledger, ctx, "tick")
    return {"scheduled_at": ctx.event.data["scheduled_at"]}
