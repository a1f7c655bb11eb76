"""Fixtures: real Celery worker processes against the test database, and waiting helpers."""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.db import connection

from bench import ports

ROOT = Path(__file__).resolve().parent.parent
# pytester: tests of this harness (tests/test_harness.py); workflows.pytest_plugin: the
# fixtures offered to host projects, tested like any other part of the library.
pytest_plugins = ["pytester", "workflows.pytest_plugin"]

#: The processes the current test started: a failure report shows the end of their logs.
_started: list["ProjectProcess"] = []
#: Lines of each process's log that a failure report shows.
REPORTED_LOG_LINES = 200


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A new test: forget the processes of the previous one."""
    _started.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Add the end of each started process's log to the report of a failed phase.

    Without it, a worker test that times out says only "timed out after 90s": the
    worker's log is where the reason is, and it is deleted when the test ends.
    """
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for process in _started:
        try:
            tail = process.tail(REPORTED_LOG_LINES)
        except OSError:
            continue
        report.sections.append((f"{process.kind} log {process.log} ({report.when})", tail))


def wait_until(
    predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.2, what: str = ""
) -> object:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class ProjectProcess:
    """A real process of the project (a worker, the dispatcher) against the test database.

    Started in its own session, so :meth:`kill` takes its children with it; its output
    goes to a log file that :meth:`tail` reads.
    """

    #: What the process is called in messages, and the prefix of its log file.
    kind = "process"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.extra_env = env or {}
        self.log = Path(tempfile.mkstemp(prefix=f"{self.kind}-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    def _spawn(self, command: list[str], ready: bytes, **env: str) -> None:
        """Start ``command``; wait until its log shows ``ready`` (fail if it exits)."""
        full_env = dict(os.environ)
        full_env.update(
            DJANGO_SETTINGS_MODULE="tests.settings",
            WORKFLOWS_TEST_DATABASE_NAME=str(connection.settings_dict["NAME"]),
            PYTHONPATH=str(ROOT),
            **env,
        )
        full_env.update(self.extra_env)
        handle = self.log.open("ab")
        _started.append(self)
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_until(
            lambda: ready in self.log.read_bytes() or self.process.poll() is not None,
            timeout=60,
            what=f"the {self.kind} to start",
        )
        if self.process.poll() is not None:
            pytest.fail(f"{self.kind} exited at start:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the process and its children at once, as a crash would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, grace: float = 20.0) -> None:
        """Stop it with SIGTERM (a warm shutdown), or kill it after ``grace`` seconds."""
        self.ask_to_stop()
        self.wait_or_kill(time.monotonic() + grace)

    def ask_to_stop(self) -> None:
        """Send SIGTERM (a warm shutdown: the task executing finishes first)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        """Wait for the process to end until ``deadline`` (monotonic); then SIGKILL it."""
        if self.process and self.process.poll() is None:
            try:
                self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 60) -> str:
        """The end of the process's log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Worker(ProjectProcess):
    """A real ``celery -A settings worker`` process (with its dispatcher thread)."""

    kind = "worker"

    def __init__(self, concurrency: int = 2, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        self.concurrency = concurrency

    def start(self) -> "Worker":
        command = [
            sys.executable, "-m", "celery", "-A", "settings", "worker",
            "--loglevel", "INFO", "--concurrency", str(self.concurrency), "--pool", "prefork",
            "--hostname", f"test-{uuid.uuid4().hex[:8]}@%h",
            "--without-mingle", "--without-gossip", "--without-heartbeat",
        ]  # fmt: skip
        self._spawn(command, b"ready.")
        return self


def purge_test_queue() -> None:
    """Empty this session's Celery queue (see ``tests/settings.py``)."""
    from settings.celery import app

    app.control.purge()  # declares the queue first, so a fresh broker is fine too


@pytest.fixture
def start_worker(transactional_db) -> Iterator[Callable[..., Worker]]:
    """Start real worker processes; all are stopped at the end of the test."""
    workers: list[Worker] = []
    # Bells that earlier tests of this session rang (sends outside ``no_broker``) name
    # runs that no longer exist: a new worker would spend the test skipping them.
    purge_test_queue()

    def start(**options) -> Worker:
        worker = Worker(**options).start()
        workers.append(worker)
        return worker

    yield start
    # All at once: a test's workers stop in the time of the slowest, not the sum. What a
    # test left executing gets a short grace: the test is over, its database is reset.
    for worker in workers:
        worker.ask_to_stop()
    deadline = time.monotonic() + 10
    for worker in workers:
        worker.wait_or_kill(deadline)
    for worker in workers:
        if os.environ.get("WORKFLOWS_TEST_SHOW_WORKER_LOG"):
            print(worker.tail(200))
        worker.log.unlink(missing_ok=True)


@pytest.fixture
def worker(start_worker) -> Worker:
    """One running worker process."""
    return start_worker()


# --- chaos and concurrency helpers ------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--chaos-seconds``: how long the chaos suite injects faults (or ``CHAOS_SECONDS``)."""
    parser.addoption(
        "--chaos-seconds",
        type=float,
        default=None,
        help="seconds of fault injection in tests/chaos (default: CHAOS_SECONDS or 60)",
    )


class Dispatcher(ProjectProcess):
    """A real ``manage.py run_dispatcher`` process against the test database."""

    kind = "dispatcher"

    def start(self) -> "Dispatcher":
        command = [sys.executable, "manage.py", "run_dispatcher"]
        self._spawn(command, b"Dispatcher running", PYTHONUNBUFFERED="1")
        return self


class RedisServer:
    """A private ``redis-server`` (no persistence) that a test may flush, kill and restart."""

    def __init__(self) -> None:
        self.port = ports.free_port()
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """The broker URL of database 0 of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        """A redis-py client of database 0."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=0, socket_timeout=5)

    def start(self) -> "RedisServer":
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self.starts += 1

        def up() -> bool:
            try:
                return bool(self.client().ping())
            except Exception:
                return False

        wait_until(up, timeout=30, interval=0.1, what=f"redis-server on port {self.port}")
        return self

    def kill(self) -> None:
        """SIGKILL the server: every message it held is gone."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


class broker_url:
    """Context manager: the test process's Celery app publishes to ``url`` meanwhile."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> "broker_url":
        from settings.celery import app

        self.previous = app.conf.broker_url
        app.close()  # drop pooled connections to the previous broker
        app.conf.broker_url = self.url
        return self

    def __exit__(self, *exc: object) -> None:
        from settings.celery import app

        app.close()
        app.conf.broker_url = self.previous


# --- shared helpers of the test modules -----------------------------------------------
# One place for what several modules need: waiting for runs, starting and finishing them
# in-process, the "no step body ran again after its memo" check, permissions, commands.


def all_finished(expected: int | None = None) -> Callable[[], bool]:
    """A predicate for :func:`wait_until`: at least ``expected`` runs, all terminal."""
    from workflows.models import TERMINAL_STATUSES, WorkflowRun

    def check() -> bool:
        runs = WorkflowRun.objects.all()
        if expected is not None and runs.count() < expected:
            return False
        return runs.exists() and not runs.exclude(status__in=TERMINAL_STATUSES).exists()

    return check


def assert_no_committed_step_ran_again() -> None:
    """No ledger write of a step happened after that step's memo was committed."""
    from tests.testapp.models import LedgerEntry
    from workflows.models import StepResult

    for step in StepResult.objects.filter(kind="run", status="completed"):
        later = LedgerEntry.objects.filter(
            run_id=str(step.run_id), step=step.step_id, created_at__gt=step.finished_at
        )
        assert not later.exists(), f"step {step.step_id} of run {step.run_id} ran again"


def start_run(name: str, data: dict | None = None, workspace: str | None = None):
    """Send ``name`` without ringing a broker; return the (first) run it triggered."""
    import eventbus
    from workflows.models import WorkflowRun
    from workflows.testing import no_broker

    with no_broker():
        event_id = eventbus.send(name, data or {}, workspace=workspace)
    return (
        WorkflowRun.objects.filter(event_id=event_id, parent__isnull=True)
        .order_by("workflow_id")
        .first()
    )


def finish_run(run, skip_time: bool = True):
    """Drain in-process (time skipped unless told) and return ``run`` refreshed."""
    from workflows.testing import drain

    drain(skip_time=skip_time)
    run.refresh_from_db()
    return run


def failed_run(order: int = 1):
    """A run of ``adm-flaky`` (tests/admin_workflows.py) that failed at its step, in-process."""
    import eventbus
    from workflows import testing
    from workflows.models import RunStatus, WorkflowRun

    eventbus.send("adm/flaky", {"order": order})
    testing.drain(skip_time=True)
    run = WorkflowRun.objects.get(workflow_id="adm-flaky")
    assert run.status == RunStatus.FAILED, run.status
    return run


def grant(user, model: type, *codenames: str) -> None:
    """Give ``user`` permissions (custom ones are created if the model does not declare them)."""
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType

    ct = ContentType.objects.get_for_model(model)
    for codename in codenames:
        perm, _ = Permission.objects.get_or_create(
            content_type=ct, codename=codename, defaults={"name": codename.replace("_", " ")}
        )
        user.user_permissions.add(perm)


def run_command(*args: str) -> str:
    """``call_command`` as an operator would type it; returns what it printed on stdout."""
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


@contextlib.contextmanager
def racing_a_wait(action: Callable[[], None], what: str) -> Iterator[None]:
    """Inside the block, a wait recorded by ``waits.record_event_wait`` starts ``action``
    in another thread (on its own connection) before the waiter's transaction commits,
    and lets the waiter go on only once ``action`` waits for an advisory lock (the
    waiter's exclusive one); on leaving, waits for ``action`` to end. PostgreSQL."""
    from workflows import waits

    threads: list[threading.Thread] = []
    original = waits.record_event_wait

    def on_its_own_connection() -> None:
        try:
            action()
        finally:
            connection.close()

    def record_then_race(*args, **kwargs):
        result = original(*args, **kwargs)
        thread = threading.Thread(target=on_its_own_connection)
        thread.start()
        threads.append(thread)
        wait_until(lambda: _advisory_waiters() > 0, timeout=30, interval=0.005, what=what)
        return result

    waits.record_event_wait = record_then_race
    try:
        yield
    finally:
        waits.record_event_wait = original
        for thread in threads:
            thread.join(30)


def _advisory_waiters() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]
