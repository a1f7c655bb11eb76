"""Workflows of the admission tests (rate limits, debounce, batches, singletons,
idempotency): ``tests/test_admission.py`` and ``tests/test_admission_worker.py``."""

from workflows import workflow


@workflow(
    id="adm-rate",
    trigger="adm/import",
    rate_limit={"limit": 2, "period": "1h", "key": "event.data.user"},
)
def rate_limited(ctx):
    return {"user": ctx.event.data.get("user")}


@workflow(
    id="adm-debounce",
    trigger="adm/typed",
    debounce={"period": "1s", "key": "event.data.user", "timeout": "4s"},
)
def debounced(ctx):
    return {"last": ctx.event.data.get("n"), "events": [e.id for e in ctx.events]}


@workflow(
    id="adm-batch",
    trigger="adm/row",
    batch_events={"max_size": 5, "timeout": "1s", "key": "event.data.table"},
)
def batched(ctx):
    before = [e.id for e in ctx.events]
    ctx.step.run("write", lambda: len(before))
    ctx.step.sleep("settle", ctx.event.data.get("sleep", 0.01))
    # A resumed execution reads the batch again: it must be the same list.
    return {"events": [e.id for e in ctx.events], "before": before, "first": ctx.event.id}


@workflow(
    id="adm-single-skip",
    trigger="adm/bill",
    singleton={"mode": "skip", "key": "event.data.account"},
)
def single_skip(ctx):
    ctx.step.wait_for_event("release", event="adm/release", match="data.account", timeout="2m")
    return {"n": ctx.event.data.get("n")}


@workflow(
    id="adm-single-cancel",
    trigger="adm/sync",
    singleton={"mode": "cancel", "key": "event.data.account"},
)
def single_cancel(ctx):
    ctx.step.send_event(
        "later", name="adm/never", data={"account": ctx.event.data.get("account")}, ts=4102444800000
    )
    ctx.step.wait_for_event("release", event="adm/release", match="data.account", timeout="2m")
    return {"n": ctx.event.data.get("n")}


@workflow(id="adm-idem", trigger="adm/order", idempotency="event.data.orderId")
def idempotent(ctx):
    return {"order": ctx.event.data.get("orderId")}


@workflow(id="adm-plain", trigger=["adm/import", "adm/order", "adm/row"])
def plain(ctx):
    """Subscribed beside the gated ones: still gets every event."""
    return None
