"""Workflows of the chaos suite, and the emission log the suite and the concurrency tests read.

Every step body writes one ledger row in its own transaction, so the suite can tell a
body that ran twice from a memo that was replayed. ``step.invoke`` and
``step.wait_for_event`` are part of every order that asks for them.
"""

import os
import time

from django.db import transaction

from eventbus import bus
from workflows import lifecycle, workflow

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
# The log must not take the engine off its quiet end of a run (one statement that ends it
# and stores its run.finished, heard by no subscriber) nor off its quiet send (one that
# stores an event sent alone with its runs): the chaos suite checks both under faults.
# So run.finished events are counted in the table (exactly one per ended run), and the
# events sent alone by their runs (exactly one per subscribed workflow), not in this log.
lifecycle.skippable_subscriber(log_emissions)


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
    if data.get("invoke"):
        price = ctx.step.invoke("price", workflow="chaos-price", data={"order": number})
        result["price"] = price["price"]
    if data.get("wait"):
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
    """Invoked by every other ``chaos-order`` (``step.invoke``)."""
    ctx.step.run("quote", ledger, ctx, "quote")
    return {"price": 100 + ctx.event.data["order"] % 7}


@workflow(id="chaos-tick", trigger=None, retries=CHAOS_RETRIES)
def tick(ctx):
    """Started by the suite's schedule every 2 s: exactly one run per slot, under faults."""
    ctx.step.run("tick", ledger, ctx, "tick")
    return {"scheduled_at": ctx.event.data["scheduled_at"]}


# Admission under faults (issue 13). Their triggers are outside "chaos/*", which the
# suite's one-run-per-event check covers: these start one run per burst or per batch.
@workflow(
    id="chaos-debounce",
    trigger="chaosadm/typed",
    retries=CHAOS_RETRIES,
    debounce={"period": "1s", "key": "event.data.burst", "timeout": "5s"},
)
def debounced(ctx):
    """One run per burst of ``chaosadm/typed`` events, with the burst's last event."""
    ctx.step.run("index", ledger, ctx, "index")
    return {"burst": ctx.event.data["burst"], "n": ctx.event.data["n"]}


@workflow(
    id="chaos-batch",
    trigger="chaosadm/row",
    retries=CHAOS_RETRIES,
    batch_events={"max_size": 7, "timeout": "2s"},
)
def batched(ctx):
    """One run per batch of ``chaosadm/row`` events; ``ctx.events`` kept across a sleep."""
    ctx.step.run("write", ledger, ctx, "write")
    ctx.step.sleep("settle", 0.3)
    return {"events": [event.id for event in ctx.events]}


# Concurrency under faults (issue 12): at most two executions at once per key, counted
# from the spans their bodies record (a body cut off by a kill records none).
CHAOS_LIMIT = 2


def span(ctx, step: str, label: str, seconds: float) -> dict:
    """A step body: stay busy, then record its ledger row and its start and end."""
    from tests.testapp.models import Span

    started = time.time()
    ledger(ctx, step, seconds)
    Span.record(ctx.run_id, label, started)
    return {"started": started}


@workflow(
    id="chaos-limited",
    trigger="chaosflow/job",
    retries=CHAOS_RETRIES,
    concurrency={"limit": CHAOS_LIMIT, "key": "event.data.k"},
)
def limited(ctx):
    """Two steps around a sleep (which frees the slot), two at once per key at most."""
    label = f"chaos-limited:{ctx.event.data['k']}"
    ctx.step.run("first", span, ctx, "first", label, 0.2)
    ctx.step.sleep("between", 0.5)
    ctx.step.run("second", span, ctx, "second", label, 0.2)
    return {"k": ctx.event.data["k"]}
