"""``pause_workflow ID [--workspace SLUG]``."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import pausing
from workflows.exceptions import ConsoleError


class Command(BaseCommand):
    """Pause a workflow: events start no run of it and its runs are held."""

    help = (
        "Pause a workflow in every workspace, or in one: events start no run of it and none "
        "of its runs is started or resumed until resume_workflow."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """The workflow id and an optional workspace."""
        parser.add_argument("workflow_id", help="the workflow's id")
        parser.add_argument("--workspace", default=None, help="pause it in this workspace only")

    def handle(self, *args: Any, **options: Any) -> None:
        """Pause and say what happened."""
        where = f"workspace {options['workspace']!r}" if options["workspace"] else "every workspace"
        try:
            paused = pausing.pause_workflow(options["workflow_id"], workspace=options["workspace"])
        except ConsoleError as exc:
            raise CommandError(str(exc)) from None
        verb = "Paused" if paused else "Already paused:"
        self.stdout.write(self.style.SUCCESS(f"{verb} {options['workflow_id']} in {where}."))
