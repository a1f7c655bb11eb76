"""``create_event_key --workspace SLUG [--name NAME] [--prefix PREFIX]…``."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus import keys
from eventbus.exceptions import EventKeyError


class Command(BaseCommand):
    """Create an event key for the HTTP event API and print it, once."""

    help = (
        "Create an event key for POST /e/<key> in a workspace; the key is printed alone "
        "on the last line, this once (only its hash is stored)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """The workspace, a label, and the name prefixes the key may send."""
        parser.add_argument("--workspace", required=True, help="workspace slug")
        parser.add_argument("--name", default="", help="a label for people")
        parser.add_argument(
            "--prefix",
            action="append",
            default=[],
            dest="prefixes",
            help="event name prefix the key may send (repeat for several; none: any name)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Create the key, then print it last."""
        try:
            row, key = keys.create_event_key(
                options["workspace"], name=options["name"], prefixes=options["prefixes"]
            )
        except EventKeyError as exc:
            raise CommandError(str(exc)) from None
        allowed = ", ".join(row.prefixes) if row.prefixes else "any name"
        self.stdout.write(
            f"Created event key {row.pk} ({row.name or 'no name'}) for workspace "
            f"{row.workspace.slug!r}; it may send: {allowed}."
        )
        self.stdout.write("Store the key now: it is not shown again.")
        self.stdout.write(key)
