"""Test workflows for concurrency limits, throttles and priority (docs/flow-control.md).

Each records every execution of its step body as a :class:`~tests.testapp.models.Span`
under a label, so a test can count how many ran at once, and in which order they began.
"""

import functools
import time

from workflows import workflow


def hold(ctx, label: str, seconds: float) -> dict:
    """A step body: stay busy ``seconds``, then record the span in its own transaction.

    With ``tag_task`` in the event's data, the label ends with ``:`` and the id of the
    Celery task executing the run (which tells a run handed on in-process from one rung).
    """
    from celery import current_task

    from tests.testapp.models import Span

    started = time.time()
    time.sleep(seconds)
    if ctx.event.data.get("tag_task"):
        label = f"{label}:{current_task.request.id}"
    Span.record(ctx.run_id, label, started)
    return {"started": started}


def _body(ctx, label: str) -> dict:
    data = ctx.event.data
    result = ctx.step.run("busy", hold, ctx, label, data.get("seconds", 0.2))
    if data.get("sleep"):
        ctx.step.sleep("rest", data["sleep"])
        ctx.step.run("after", hold, ctx, label + ":after", data.get("seconds", 0.2))
    return result


@workflow(id="f-one", trigger="flow/one", concurrency=1)
def one_at_a_time(ctx):
    """At most one run executes at once."""
    return _body(ctx, "one")


@workflow(
    id="f-keyed",
    trigger="flow/keyed",
    concurrency=[{"limit": 3}, {"limit": 1, "key": "event.data.account"}],
)
def keyed(ctx):
    """At most three at once in all, and one per account."""
    return _body(ctx, "keyed:" + str(ctx.event.data.get("account")))


@workflow(id="f-pool-a", trigger="flow/pool.a", concurrency={"limit": 2, "pool": "test-pool"})
def pool_a(ctx):
    """Shares the pool ``test-pool`` (two at once) with ``f-pool-b``."""
    return _body(ctx, "pool")


@workflow(id="f-pool-b", trigger="flow/pool.b", concurrency={"limit": 2, "pool": "test-pool"})
def pool_b(ctx):
    """Shares the pool ``test-pool`` with ``f-pool-a``."""
    return _body(ctx, "pool")


@workflow(
    id="f-fair",
    trigger="flow/fair",
    concurrency={"limit": 1, "key": "event.data.tenant"},
)
def fair(ctx):
    """One run at a time per tenant."""
    return _body(ctx, "fair:" + str(ctx.event.data.get("tenant")))


@workflow(
    id="f-throttled",
    trigger="flow/throttled",
    throttle={"limit": 2, "period": "2s", "key": "event.data.key"},
)
def throttled(ctx):
    """Two first starts per 2 s per key, spaced 1 s apart."""
    return _body(ctx, "throttled:" + str(ctx.event.data.get("key")))


@workflow(
    id="f-priority",
    trigger="flow/priority",
    concurrency=1,
    priority={"run": "event.data.plan == 'pro' ? 120 : 0"},
)
def prioritised(ctx):
    """One at a time; runs of 'pro' accounts go two minutes ahead in line."""
    return _body(ctx, "priority")


@workflow(
    id="f-fanned",
    trigger="flow/fanned",
    concurrency=2,
)
def fanned(ctx):
    """Parallel branches of a limited workflow count against its limit too."""
    seconds = ctx.event.data.get("seconds", 0.3)
    branches = [
        functools.partial(hold, ctx, "fanned", seconds) for _ in range(ctx.event.data.get("n", 4))
    ]
    return ctx.step.parallel("fan", branches)
