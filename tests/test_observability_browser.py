"""The admin dashboard in a real browser; saves ``docs/dashboard.png`` for the docs.

Needs Debian's ``chromium`` and Playwright's Python package (``.ci/browser-setup.sh``),
as tests/test_admin_browser.py does, whose ``page`` fixture this uses.
"""

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

import eventbus
from tests.test_admin_browser import CHROMIUM, page  # noqa: F401  (the fixture)
from workflows.models import WorkflowRun
from workflows.testing import drain, no_broker

DOCS = Path(__file__).resolve().parent.parent / "docs"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing"),
]


@pytest.mark.django_db(transaction=True)
def test_the_dashboard_shows_runs_backlog_failures_and_slowest_steps(live_server, page):  # noqa: F811
    User.objects.create_superuser("admin", "admin@example.com", "secret-pw")
    with no_broker():
        for n in range(6):
            eventbus.send("obs/go", {"n": n})
        for _ in range(2):
            eventbus.send("obs/fail", {})
        drain(skip_time=True)
        eventbus.send("obs/wait", {})
        drain(skip_time=True)
        for _ in range(3):
            eventbus.send("obs/told", {})  # queued: the backlog
    # Spread the runs over the day, so the chart has more than one bar.
    now = timezone.now()
    for index, run in enumerate(WorkflowRun.objects.order_by("created_at")):
        WorkflowRun.objects.filter(pk=run.pk).update(
            created_at=now - timedelta(hours=(index * 5) % 23, minutes=index)
        )

    page.goto(f"{live_server.url}/admin/login/?next=/admin/workflows/metrictally/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "secret-pw")
    page.click("input[type=submit]")
    page.wait_for_selector("#wf-chart")
    day = page.inner_text("#wf-day")
    assert "obs-fail" in day and "100.0%" in day  # both obs-fail runs failed
    assert "obs-flow" in day and "0.0%" in day
    assert page.locator("#wf-chart rect").count() >= 3
    assert "flaky" in page.inner_text("#wf-slowest") or "first" in page.inner_text("#wf-slowest")
    assert "queued\n3" in page.inner_text("#wf-now")
    assert page.locator("script[src^=http], link[href^=http]").count() == 0  # no CDN
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)
