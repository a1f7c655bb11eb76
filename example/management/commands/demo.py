"""``manage.py demo``: a real worker, one event fanning out, and the runs it produced."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

import eventbus
from eventbus.models import Event, EventStatus
from workflows import registry
from workflows.exceptions import UnknownWorkflowError
from workflows.models import TERMINAL_STATUSES, WorkflowRun


class Command(BaseCommand):
    """Run the demo end to end with a real Celery worker process."""

    help = (
        "Start a Celery worker, send a demo/signup.completed event that fans out to several "
        "workflows, show progress, then print every run with its steps and timings."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--app", default="settings", help="Celery app for the worker.")
        parser.add_argument("--timeout", type=float, default=90.0, help="Seconds to wait.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            registry.get("demo-onboarding")
        except UnknownWorkflowError:
            raise CommandError(
                'the demo workflows are not registered: add "example" to INSTALLED_APPS '
                "(the example project does)"
            ) from None
        call_command("migrate", verbosity=0)
        self.stdout.write(self.style.MIGRATE_HEADING("Starting a Celery worker…"))
        self.stdout.write(f"  database: {settings.DATABASES['default']['NAME']}")
        self.stdout.write(f"  broker:   {settings.CELERY_BROKER_URL}")
        worker = self._start_worker(options["app"])
        try:
            self._run(options["timeout"])
        finally:
            self._stop_worker(worker)

    def _start_worker(self, app: str) -> subprocess.Popen:
        log = open(os.path.join(settings.BASE_DIR, "var", "demo-worker.log"), "ab")  # noqa: SIM115
        command = [
            sys.executable, "-m", "celery", "-A", app, "worker", "--loglevel", "INFO",
            "--concurrency", "2", "--hostname", f"demo-{uuid.uuid4().hex[:6]}@%h",
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.stdout.write(f"  worker pid {process.pid}, log in var/demo-worker.log")
        return process

    def _stop_worker(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.stdout.write("Worker stopped.")

    def _run(self, timeout: float) -> None:
        started = timezone.now()
        user = f"u_{uuid.uuid4().hex[:6]}"
        event_id = eventbus.send(
            "demo/signup.completed", {"userId": user, "email": f"{user}@example.com"}
        )
        self.stdout.write(self.style.MIGRATE_HEADING(f"\nSent demo/signup.completed ({event_id})"))
        deadline = time.monotonic() + timeout
        runs = WorkflowRun.objects.filter(created_at__gte=started)
        pending_events = Event.objects.filter(created_at__gte=started, status=EventStatus.SCHEDULED)
        while True:
            counts = Counter(runs.values_list("status", flat=True))
            scheduled = pending_events.count()
            elapsed = (timezone.now() - started).total_seconds()
            summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            self.stdout.write(
                f"  {elapsed:5.1f}s  runs: {summary or 'none yet'}; scheduled events: {scheduled}"
            )
            finished = sum(n for status, n in counts.items() if status in TERMINAL_STATUSES)
            if counts and finished == sum(counts.values()) and not scheduled:
                break
            if time.monotonic() > deadline:
                raise CommandError(
                    f"the demo did not finish within {timeout:g}s; see var/demo-worker.log"
                )
            time.sleep(1)
        self._report(runs.order_by("created_at"), started)

    def _report(self, runs: Any, started: Any) -> None:
        self.stdout.write(
            self.style.MIGRATE_HEADING("\nRuns and their steps (times from the send)")
        )
        for run in runs.select_related("event"):
            offset = (run.created_at - started).total_seconds()
            took = (run.finished_at - run.created_at).total_seconds() if run.finished_at else 0
            style = self.style.SUCCESS if run.status == "completed" else self.style.ERROR
            self.stdout.write(
                style(f"\n{run.workflow_id}  {run.status}")
                + f"  run {run.pk}\n  trigger {run.event.name}, created +{offset:.2f}s, "
                f"took {took:.2f}s, output {run.output}"
            )
            for step in run.steps.order_by("position"):
                begin = (step.started_at - started).total_seconds()
                end = ((step.finished_at or step.started_at) - started).total_seconds()
                tries = f", {step.attempt + 1} tries" if step.attempt else ""
                self.stdout.write(
                    f"    {step.step_id:<18} {step.kind:<10} {step.status:<9} "
                    f"+{begin:6.2f}s → +{end:6.2f}s{tries}"
                )
        self.stdout.write(
            self.style.MIGRATE_HEADING("\nOpen the admin to inspect and replay these runs:")
        )
        self.stdout.write(
            "  .venv/bin/python manage.py createsuperuser\n"
            "  .venv/bin/python manage.py runserver\n"
            "  then open http://127.0.0.1:8000/admin/workflows/workflowrun/\n"
            "Or from the shell: .venv/bin/python manage.py show_run RUN_ID"
        )
