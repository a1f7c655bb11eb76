"""Workflows of the demo (``python manage.py demo``), found by autodiscovery.

The engine imports ``workflows.py`` of every installed app, so installing ``example``
registers these. One ``demo/signup.completed`` event fans out to three workflows; one of
them emits more events, now and a few seconds ahead, which trigger further runs.
"""

import hashlib
import time
from datetime import timedelta

from workflows import workflow


def create_profile(user_id: str, email: str) -> dict:
    """Pretend to create a profile record."""
    return {"id": user_id, "email": email, "plan": "trial"}


def send_email(email: str, template: str) -> dict:
    """Pretend to send an email."""
    return {"to": email, "template": template, "sent_at": int(time.time() * 1000)}


@workflow(id="demo-onboarding", trigger="demo/signup.completed", retries=3)
def onboarding(ctx):
    """Create the profile, tell the team now, schedule a check-in, wait, then welcome."""
    data = ctx.event.data
    profile = ctx.step.run("create-profile", create_profile, data["userId"], data["email"])
    ctx.step.send_event("notify-team", name="demo/team.notified", data={"userId": profile["id"]})
    ctx.step.send_event(
        "schedule-checkin",
        name="demo/checkin.due",
        data={"userId": profile["id"]},
        ts=int(time.time() * 1000) + 4_000,
    )
    ctx.step.sleep("cool-off", timedelta(seconds=2))
    receipt = ctx.step.run("send-welcome", send_email, profile["email"], "welcome")
    return {"profile": profile, "welcome": receipt}


@workflow(id="demo-lead-score", trigger="demo/signup.completed", retries=2)
def lead_score(ctx):
    """Score the lead; the scoring service fails on its first try and is retried."""

    def score(email: str) -> int:
        if ctx.attempt == 0:
            raise ConnectionError("scoring service timed out (this demo fails once)")
        return int(hashlib.sha1(email.encode()).hexdigest(), 16) % 100

    value = ctx.step.run("score", score, ctx.event.data["email"])
    return {"score": value}


@workflow(id="demo-audit", trigger="demo/*")
def audit(ctx):
    """Record every demo event (a wildcard trigger)."""
    return ctx.step.run("record", lambda: {"event": ctx.event.name, "id": ctx.event.id})


@workflow(id="demo-checkin", trigger="demo/checkin.due")
def checkin(ctx):
    """Runs when the deferred check-in event is emitted."""
    delay_ms = int(time.time() * 1000) - ctx.event.ts
    ctx.step.run("send-checkin", send_email, "user@example.com", "checkin")
    return {"emitted_late_by_ms": max(delay_ms, 0)}
