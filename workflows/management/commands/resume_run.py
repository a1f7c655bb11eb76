"""``resume_run RUN_ID [--workspace SLUG]``."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import services
from workflows.exceptions import ConsoleError


class Command(BaseCommand):
    """Resume a paused run on the code deployed now; exits non-zero if it is not paused."""

    help = (
        "Resume a paused run on the code deployed now (a run that still does not fit the "
        "code is paused again)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """RUN_ID and an optional workspace guard."""
        parser.add_argument("run_id", help="the run's id (a UUID)")
        parser.add_argument(
            "--workspace", default=None, help="refuse unless the run is in this workspace"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Resume and say what happened."""
        try:
            run = services.resume_run(options["run_id"], workspace=options["workspace"])
        except ConsoleError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"Resumed run {run.pk} (now {run.status})."))
