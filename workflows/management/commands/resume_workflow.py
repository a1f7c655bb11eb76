"""``resume_workflow ID [--workspace SLUG]``."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import pausing
from workflows.exceptions import ConsoleError


class Command(BaseCommand):
    """Resume a paused workflow; its held runs move on at once."""

    help = "Resume a paused workflow (everywhere, or in one workspace); its runs move on."

    def add_arguments(self, parser: CommandParser) -> None:
        """The workflow id and an optional workspace."""
        parser.add_argument("workflow_id", help="the workflow's id")
        parser.add_argument("--workspace", default=None, help="resume it in this workspace only")

    def handle(self, *args: Any, **options: Any) -> None:
        """Resume and say how many runs move on."""
        try:
            rung = pausing.resume_workflow(options["workflow_id"], workspace=options["workspace"])
        except ConsoleError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            self.style.SUCCESS(f"Resumed {options['workflow_id']}; {rung} run(s) move on.")
        )
