"""``purge_runs --older-than DAYS [--status S …] [--batch-size N] [--dry-run]``."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import retention
from workflows.exceptions import ConsoleError
from workflows.management import cli


class Command(BaseCommand):
    """Delete old finished runs and their steps, in batches, showing progress."""

    help = "Delete finished runs older than N days (and their steps), in batches."

    def add_arguments(self, parser: CommandParser) -> None:
        """Age, statuses, batch size, dry run."""
        parser.add_argument("--older-than", type=cli.days, required=True, metavar="DAYS")
        parser.add_argument(
            "--status",
            action="append",
            help="completed, failed or cancelled; repeat for several (default: all three)",
        )
        parser.add_argument("--batch-size", type=cli.whole_number(1, 10_000), default=500)
        parser.add_argument("--dry-run", action="store_true", help="only count what would go")

    def handle(self, *args: Any, **options: Any) -> None:
        """Count, then delete batch by batch."""
        try:
            runs = retention.purgeable_runs(options["older_than"], options["status"])
            total = runs.count()
            if options["dry_run"]:
                self.stdout.write(f"Would delete {total} run(s).")
                return
            deleted = 0
            for deleted in retention.purge_runs(
                options["older_than"], options["status"], options["batch_size"]
            ):
                self.stdout.write(f"deleted {deleted}/{total} run(s)")
        except ConsoleError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"Purged {deleted} run(s)."))
