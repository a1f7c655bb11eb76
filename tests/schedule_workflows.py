"""Workflows of the schedule tests (tests/test_schedules*.py).

``s-target`` is plain (schedules created by the tests point at it). ``s-every-second``
declares ``cron=`` and is defined only in processes started with
``WORKFLOWS_TEST_CRON=1``: a cron in every test process would fire in every test.
"""

import os

from workflows import workflow


@workflow(id="s-target", retries=0)
def target(ctx):
    """Return what the schedule sent."""
    return {"scheduled_at": ctx.event.data["scheduled_at"], "name": ctx.event.name}


if os.environ.get("WORKFLOWS_TEST_CRON"):

    @workflow(id="s-every-second", cron=["* * * * * *", "*/2 * * * * *"], retries=0)
    def every_second(ctx):
        """A code cron with two entries that both match every even second."""
        return ctx.event.data["scheduled_at"]
