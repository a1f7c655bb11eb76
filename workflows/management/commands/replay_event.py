"""``replay_event EVENT_ID [--workspace SLUG]``."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import services
from workflows.exceptions import ConsoleError


class Command(BaseCommand):
    """Start a new run of every workflow subscribed to an event now."""

    help = "Replay an event: one new run per workflow subscribed to it now."

    def add_arguments(self, parser: CommandParser) -> None:
        """EVENT_ID and an optional workspace guard."""
        parser.add_argument("event_id", help="the event's id (a UUID)")
        parser.add_argument(
            "--workspace", default=None, help="refuse unless the event is in this workspace"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Replay and list the new runs."""
        try:
            runs = services.replay_event(options["event_id"], workspace=options["workspace"])
        except ConsoleError as exc:
            raise CommandError(str(exc)) from None
        for run in runs:
            of = f" (replay of {run.replay_of_id})" if run.is_replay else " (first run)"
            self.stdout.write(f"{run.pk} {run.workflow_id}{of}")
        self.stdout.write(self.style.SUCCESS(f"Started {len(runs)} run(s)."))
