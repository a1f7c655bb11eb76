"""The admin console in a real browser: log in, open an event and a run, replay from a step.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and Playwright's Python package;
``.ci/browser-setup.sh`` installs both. Screenshots of the run page are saved under
``test-artifacts/`` (ignored by git): ``run-page.png``, and ``run-page-1280.png``,
``run-page-phone.png``, ``run-list-1280.png``, ``run-list-phone.png``.
"""

import os
import re
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


#: The widths the run page must read well at: a laptop's window, and a phone's.
WIDTHS = {"1280": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}

#: Elements whose text is cut: wider than their box, or (``outside`` true) past the
#: window's right edge.
CUT_TEXT = """([selector, outside]) => [...document.querySelectorAll(selector)]
    .filter((el) => el.scrollWidth > el.clientWidth + 1 || (outside &&
        el.getBoundingClientRect().right > document.documentElement.clientWidth + 1))
    .map((el) => el.textContent.trim())"""


def log_in(page, live_server) -> None:
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "secret-pw")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("width", list(WIDTHS))
def test_the_run_page_reads_well_at_1280_px_and_phone_width(live_server, page, width):
    admin_workflows.FLAKY["fail"] = True
    with testing.no_broker():
        User.objects.create_superuser("admin", "admin@example.com", "secret-pw")
        eventbus.send("adm/flaky", {"order": 1234})
        testing.drain(skip_time=True)
    run = WorkflowRun.objects.get(workflow_id="adm-flaky")
    page.set_viewport_size(WIDTHS[width])
    log_in(page, live_server)
    ARTIFACTS.mkdir(exist_ok=True)

    page.goto(f"{live_server.url}/admin/workflows/workflowrun/{run.pk}/change/")
    page.wait_for_selector("#wf-timeline")
    page.screenshot(path=str(ARTIFACTS / f"run-page-{width}.png"), full_page=True)
    # Every step's status, start and duration are shown whole, inside the window.
    assert page.evaluate(CUT_TEXT, [".wf-tl-meta", True]) == []
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTHS[width]["width"]
    metas = page.locator(".wf-step .wf-tl-meta").all_inner_texts()
    assert len(metas) == 3 and metas[2].startswith("failed ×2 · +")
    # Times to the millisecond, durations too.
    created = page.inner_text(".field-created .readonly, .field-created_started_finished")
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", created), created
    assert re.search(r"\d+(ms|\.\d{3}s)", page.inner_text(".field-run_duration")), page.inner_text(
        ".field-run_duration"
    )
    # A step opens from its row: its output, error and tries.
    page.click(".wf-step:has-text('charge') a.wf-step-link")
    page.wait_for_selector(".field-error_details")
    assert "card declined" in page.inner_text(".field-error_details")
    assert page.inner_text(".field-attempt .readonly").strip() == "1"

    page.goto(f"{live_server.url}/admin/workflows/workflowrun/")
    page.screenshot(path=str(ARTIFACTS / f"run-list-{width}.png"), full_page=True)
    shown = page.inner_text("#result_list td.field-created")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", shown.strip()), shown
    # The list may scroll sideways on a phone; a cell's text is never cut.
    assert page.evaluate(CUT_TEXT, ["#result_list td.field-created .wf-time", False]) == []
    assert page.evaluate(CUT_TEXT, ["#result_list td.field-created", False]) == []
