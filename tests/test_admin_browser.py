"""The admin console in a real browser: log in, open an event and a run, replay from a step.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and Playwright's Python package;
``.ci/browser-setup.sh`` installs both. The screenshot of the run page is saved to
``test-artifacts/run-page.png``.
"""

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import User

import eventbus
from tests import admin_workflows
from workflows import testing
from workflows.models import WorkflowRun

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"{CHROMIUM} is missing: run .ci/browser-setup.sh (apt-get install chromium)",
    ),
]


@pytest.fixture
def page(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls of this
    # test are still plain synchronous code, so Django's async guard does not apply.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: run .ci/browser-setup.sh"
    )
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(15_000)
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


@pytest.mark.django_db(transaction=True)
def test_find_an_event_open_its_run_and_replay_from_the_failed_step(live_server, page):
    admin_workflows.FLAKY["fail"] = True
    # Bells are dropped: no broker in this test; drain() executes runs in this process.
    with testing.no_broker():
        User.objects.create_superuser("admin", "admin@example.com", "secret-pw")
        event_id = eventbus.send("adm/flaky", {"order": 1234})
        testing.drain(skip_time=True)
        run = WorkflowRun.objects.get(workflow_id="adm-flaky")

        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", "secret-pw")
        page.click("input[type=submit]")
        page.wait_for_url(f"{live_server.url}/admin/")

        # The event: its payload as JSON and a link to the run it triggered.
        page.goto(f"{live_server.url}/admin/eventbus/event/")
        page.click('#result_list a:has-text("adm/flaky")')
        assert '"order": 1234' in page.inner_text("pre.wf-json")
        page.click(f"a:has-text('{run.pk}')")

        # The run: status, error, and a timeline with one bar per step.
        page.wait_for_selector("#wf-timeline")
        assert page.locator(".wf-step").count() == 3
        assert page.locator(".wf-bar.wf-st-failed").count() == 1
        assert "card declined" in page.inner_text("body")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "run-page.png"), full_page=True)

        # Replay from the failed step, after choosing it on the confirmation page.
        admin_workflows.FLAKY["fail"] = False
        page.click("a.wf-replay")
        page.check("label:has-text('charge') >> xpath=ancestor::tr//input[@type='radio']")
        page.click("input[name=wf-confirm]")
        page.wait_for_selector(".messagelist .success")
        assert "keeping 2 step(s)" in page.inner_text(".messagelist")

        replay = WorkflowRun.objects.get(replay_of=run)
        assert str(replay.pk) in page.url
        assert list(replay.steps.values_list("step_id", flat=True)) == ["prepare", "reserve"]
        testing.drain(skip_time=True)
        replay.refresh_from_db()
        assert replay.status == "completed" and replay.event_id == run.event_id
        assert str(run.event_id) == event_id
