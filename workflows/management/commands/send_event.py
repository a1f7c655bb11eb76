"""``send_event NAME [--data JSON] [--ts MS] [--id KEY] [--workspace SLUG]``."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

import eventbus
from workflows.models import WorkflowRun


class Command(BaseCommand):
    """Send one event, as ``eventbus.send`` does, and list the runs it triggered."""

    help = "Send an event and print its id and the runs it triggered."

    def add_arguments(self, parser: CommandParser) -> None:
        """NAME and the options of ``eventbus.send``."""
        parser.add_argument("name", help="event name, e.g. agent/contact.enrich.requested")
        parser.add_argument("--data", default="{}", help="the payload as a JSON object")
        parser.add_argument(
            "--ts", default=None, help="emission time in Unix ms (future: deferred)"
        )
        parser.add_argument("--id", default=None, help="idempotency key within the workspace")
        parser.add_argument("--workspace", default=None, help="workspace slug (default workspace)")

    def handle(self, *args: Any, **options: Any) -> None:
        """Parse, send, report."""
        try:
            data = json.loads(options["data"])
        except RecursionError:
            raise CommandError(
                "--data is nested too deeply to read (a payload may be 64 levels deep)"
            ) from None
        except ValueError as exc:  # JSONDecodeError, or an integer of over 4,300 digits
            raise CommandError(f"--data is not valid JSON: {str(exc)[:200]}") from None
        ts = options["ts"]
        if ts is not None:
            try:
                ts = float(ts) if "." in ts else int(ts)
            except ValueError:
                raise CommandError(
                    f"--ts must be a number of Unix milliseconds, got {ts!r}"
                ) from None
        try:
            event_id = eventbus.send(
                options["name"], data, ts=ts, id=options["id"], workspace=options["workspace"]
            )
        except eventbus.EventError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(event_id)
        runs = WorkflowRun.objects.filter(event_id=event_id).order_by("workflow_id")
        for run in runs.only("pk", "workflow_id", "status"):
            self.stdout.write(f"  triggered {run.workflow_id}: run {run.pk} ({run.status})")
