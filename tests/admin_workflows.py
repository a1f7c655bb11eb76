"""Workflows used by the console tests (admin, commands, services); ids start with ``adm-``."""

from datetime import timedelta

from workflows import workflow

#: Step bodies that really ran, in order: shows which steps a replay re-ran.
CALLS: list[str] = []
#: Whether ``adm-flaky``'s ``charge`` step fails (tests switch it off to "fix the bug").
FLAKY = {"fail": True}


def _record(name: str, value: object = None) -> object:
    CALLS.append(name)
    return {"step": name, "value": value}


@workflow(id="adm-steps", trigger="adm/steps", retries=0)
def steps(ctx):
    """A run of each kind of step: run, send_event, sleep, run."""
    first = ctx.step.run("fetch", _record, "fetch", ctx.event.data.get("n"))
    ctx.step.send_event("announce", name="adm/announced", data={"n": ctx.event.data.get("n")})
    ctx.step.sleep("pause", timedelta(seconds=30))
    ctx.step.run("store", _record, "store")
    return {"fetched": first}


def _charge() -> dict:
    CALLS.append("charge")
    if FLAKY["fail"]:
        raise RuntimeError("card declined (test failure)")
    return {"charged": True}


@workflow(id="adm-flaky", trigger="adm/flaky", retries=1)
def flaky(ctx):
    """Fails at ``charge`` while ``FLAKY["fail"]`` is set (after one retry)."""
    ctx.step.run("prepare", _record, "prepare")
    ctx.step.run("reserve", _record, "reserve")
    ctx.step.run("charge", _charge)
    ctx.step.run("notify", _record, "notify")
    return {"ok": True}


@workflow(id="adm-many", trigger="adm/many", retries=0)
def many(ctx):
    """Two hundred steps in a loop: the timeline must stay readable."""
    total = 0
    for i in range(ctx.event.data.get("count", 200)):
        total += ctx.step.run("item", lambda i=i: i)
    return {"total": total}


def fresh_state():
    """Fixture body: clear the recorded calls and make ``adm-flaky`` fail, before and after."""
    CALLS.clear()
    FLAKY["fail"] = True
    yield
    FLAKY["fail"] = True
