"""The test harness itself: a failed test shows the logs of the processes it started."""

from tests.conftest import ROOT

INNER_TEST = """
import sys

from tests.conftest import ProjectProcess, wait_until


class Talker(ProjectProcess):
    kind = "talker"

    def start(self):
        script = "print('ready.', flush=True); print('the reason is here', flush=True)"
        self._spawn([sys.executable, "-c", script + "; import time; time.sleep(60)"], b"ready.")
        return self


def test_times_out():
    talker = Talker().start()
    try:
        wait_until(lambda: False, timeout=0.3, what="what never comes")
    finally:
        talker.kill()


def test_passes():
    talker = Talker().start()
    talker.kill()
"""


def test_a_failed_test_reports_the_end_of_each_started_process_log(pytester, monkeypatch):
    pytester.makeconftest(
        "from tests.conftest import pytest_runtest_makereport, pytest_runtest_setup"
    )
    pytester.makepyfile(test_inner=INNER_TEST)
    # In a process of its own: the inner session must not touch this one's test database.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "tests.settings")
    result = pytester.runpytest_subprocess("-p", "no:django", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*timed out after 0.3s waiting for what never comes*", "*- talker log /*(call) -*",
         "the reason is here"]
    )  # fmt: skip
    # Only the failed test's process is reported.
    assert result.stdout.str().count("talker log") == 1
