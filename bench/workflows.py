"""The workflows the benchmark runs on this project's engine (ids prefixed ``bench-``).

Their step bodies do the same work as the Celery and DBOS peers' (:mod:`bench.marks`).
"""

import os

from bench import marks
from workflows import runstore_pg, workflow

if os.environ.get("BENCH_SYNCHRONOUS_COMMIT") == "1":
    # The "ours-sync" row: the claim and the end of a run wait for the disk like every
    # other commit (the shipped engine relaxes those two; see docs/guarantees.md).
    runstore_pg.RELAXED = "SET LOCAL synchronous_commit TO ON; "
    runstore_pg.RELAXED_COMMIT = "on"


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


# --- admission (bench/admission.py) -------------------------------------------------
def _mark_all(rows: list[list]) -> int:
    """W8: the rows of a whole batch, written in one statement."""
    with marks.connection().cursor() as cursor:
        cursor.executemany(
            "INSERT INTO bench_mark (label, key, t) VALUES (%s, %s, extract(epoch from now()))",
            rows,
        )
    return len(rows)


@workflow(id="bench-adm-each", trigger="bench/adm.each", retries=0)
def adm_each(ctx):
    """W8's baseline, W2's shape: one run per event, one step writing one row."""
    data = ctx.event.data
    ctx.step.run("mark", marks.mark, data["label"], data["k"])


@workflow(
    id="bench-adm-batch",
    trigger="bench/adm.batch",
    retries=0,
    batch_events={"max_size": 100, "timeout": "2s"},
)
def adm_batch(ctx):
    """W8: one run per 100 events, one step writing their 100 rows."""
    rows = [[event.data["label"], event.data["k"]] for event in ctx.events]
    ctx.step.run("mark", _mark_all, rows)


@workflow(id="bench-adm-plain", trigger="bench/adm.plain", retries=0)
def adm_plain(ctx):
    """Send latency without admission options (the baseline)."""


@workflow(
    id="bench-adm-rated",
    trigger="bench/adm.rated",
    retries=0,
    rate_limit={"limit": 1000, "period": "1h", "key": "event.data.user"},
)
def adm_rated(ctx):
    """Send latency with a rate limit on the trigger (every send admitted)."""


@workflow(
    id="bench-adm-single",
    trigger="bench/adm.single",
    retries=0,
    singleton={"mode": "skip", "key": "event.data.user"},
)
def adm_single(ctx):
    """Send latency with a singleton on the trigger (a new key each time: a run each)."""


# --- flow control (bench/flow.py) -------------------------------------------------
@workflow(id="bench-fanout-limited", trigger="bench/fanout-limited.requested", retries=0)
def fanout_limited(ctx):
    """W7: emit ``n`` events over ``keys`` keys, each triggering ``bench-leaf-limited``."""
    label, n, keys = ctx.event.data["label"], ctx.event.data["n"], ctx.event.data["keys"]
    ctx.step.send_event(
        "fan-out",
        events=[
            {"name": "bench/leaf.limited", "data": {"label": label, "k": k, "key": k % keys}}
            for k in range(n)
        ],
    )


@workflow(
    id="bench-leaf-limited",
    trigger="bench/leaf.limited",
    retries=0,
    concurrency={"limit": 2, "key": "event.data.key"},
)
def leaf_limited(ctx):
    """W7: W2's leaf, at most two at once per key."""
    data = ctx.event.data
    ctx.step.run("mark", marks.mark, data["label"], data["k"])
