"""``cancel_run RUN_ID [--workspace SLUG]``."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import services
from workflows.exceptions import ConsoleError


class Command(BaseCommand):
    """Cancel an active run; exits non-zero if it had already finished."""

    help = "Cancel an active run (it runs no further step)."

    def add_arguments(self, parser: CommandParser) -> None:
        """RUN_ID and an optional workspace guard."""
        parser.add_argument("run_id", help="the run's id (a UUID)")
        parser.add_argument(
            "--workspace", default=None, help="refuse unless the run is in this workspace"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Cancel and say what happened."""
        try:
            cancelled = services.cancel_run(options["run_id"], workspace=options["workspace"])
        except ConsoleError as exc:
            raise CommandError(str(exc)) from None
        if not cancelled:
            status = services.get_run(options["run_id"]).status
            raise CommandError(f"run {options['run_id']} had already finished ({status})")
        self.stdout.write(self.style.SUCCESS(f"Cancelled run {options['run_id']}."))
