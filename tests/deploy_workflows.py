"""Workflows as three deploys of one code base would define them (issue 17's deploy tests).

``H17_DEPLOY`` (``a``, the default, ``b`` or ``c``) selects the deploy, as a real deploy
replaces a module: the tests start a worker with one value, stop it, and start the next.

- ``a``: both workflows run a step, sleep, and run another step.
- ``b``: ``h17-patch`` adds a step behind ``ctx.patched``; ``h17-pause`` turns its sleep
  into a ``step.run`` without a patch (a non-determinism for a run that slept on ``a``).
- ``c``: ``h17-pause`` keeps the sleep for runs that had it (``ctx.patched``).
"""

import os

from tests.testapp.workflows import write_ledger
from workflows import workflow

DEPLOY = os.environ.get("H17_DEPLOY", "a")


@workflow(id="h17-patch", trigger="h17/patch", version=DEPLOY)
def patched_workflow(ctx):
    """A step, a sleep, a step; from ``b`` on, an extra step for new runs only."""
    ctx.step.run("first", write_ledger, ctx, "first")
    new_path = DEPLOY != "a" and ctx.patched("extra-step")
    if new_path:
        ctx.step.run("extra", write_ledger, ctx, "extra")
    ctx.step.sleep("nap", ctx.event.data.get("seconds", 0))
    ctx.step.run("last", write_ledger, ctx, "last")
    return {"path": "new" if new_path else "old", "deploy": DEPLOY}


@workflow(id="h17-pause", trigger="h17/pause", version=DEPLOY, on_nondeterminism="pause")
def pausing_workflow(ctx):
    """A step, a sleep, a step; ``b`` replaces the sleep, ``c`` patches that change."""
    ctx.step.run("first", write_ledger, ctx, "first")
    if DEPLOY == "a" or (DEPLOY == "c" and not ctx.patched("nap-as-step")):
        ctx.step.sleep("nap", ctx.event.data.get("seconds", 0))
    else:
        ctx.step.run("nap", write_ledger, ctx, "nap")
    ctx.step.run("last", write_ledger, ctx, "last")
    return {"deploy": DEPLOY}
