"""pytest fixtures for a host project's tests: ``workflows_drain``, ``workflows_no_broker``.

Register the plugin in the project's top ``conftest.py``::

    pytest_plugins = ["workflows.pytest_plugin"]

Both fixtures keep the broker out of the test (bells are collected, not sent), so a test
that calls ``eventbus.send`` publishes nothing to a real broker; runs wait in the
database until :func:`workflows.testing.drain` executes them in the test's process.
They need database access as any test of Django models does (pytest-django's
``django_db`` mark or the ``db`` fixture).
"""

from collections.abc import Callable, Iterator

import pytest

from workflows import testing


@pytest.fixture
def workflows_no_broker() -> Iterator[list[str]]:
    """For the whole test, bells are collected in the yielded list instead of sent."""
    with testing.no_broker() as rung:
        yield rung


@pytest.fixture
def workflows_drain(workflows_no_broker: list[str]) -> Callable[..., int]:
    """:func:`workflows.testing.drain`, with no broker for the whole test.

    ``workflows_drain()`` executes every runnable run; ``workflows_drain(skip_time=True)``
    also brings sleeps, retries and deferred events forward to now.
    """
    return testing.drain
