"""``show_event EVENT_ID [--workspace SLUG]``."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import outcomes, services
from workflows.exceptions import ConsoleError
from workflows.management import cli


class Command(BaseCommand):
    """Print an event, the runs it started and, for each subscribed workflow without one, why."""

    help = (
        "Show an event: its fields, the runs it created and, for each subscribed workflow "
        "that got none, why (paused, rate-limited, debounced, batched, singleton, idempotent)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """EVENT_ID and a workspace guard."""
        parser.add_argument("event_id", help="the event's id (a UUID)")
        parser.add_argument(
            "--workspace", default=None, help="refuse unless the event is in this workspace"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Load and print."""
        try:
            event = services.get_event(options["event_id"], workspace=options["workspace"])
        except ConsoleError as exc:
            raise CommandError(str(exc)) from None

        def write(line: str) -> None:
            # Event data and ids come from senders: show an escape sequence, never obey it.
            self.stdout.write(cli.printable(line))

        write(f"Event     {event.pk}")
        write(f"Name      {event.name}")
        write(f"Workspace {event.workspace.slug}")
        write(f"Status    {event.status}")
        write(f"Ts        {event.ts}")
        if event.idempotency_key:
            write(f"Id key    {event.idempotency_key}")
        write(f"Data      {json.dumps(event.data, ensure_ascii=False)}")
        lines = outcomes.of_event(event)
        if not lines:
            write("Workflows none subscribed")
            return
        write("")
        width = min(max(len(line.workflow_id) for line in lines), 40)
        for line in lines:
            write(f"{line.workflow_id[:width]:<{width}}  {line.text}")
