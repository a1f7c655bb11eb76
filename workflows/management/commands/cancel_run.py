"""``cancel_run RUN_ID [--workspace SLUG]``, or in bulk:
``cancel_run --workflow ID [--status S]… [--workspace SLUG] [--event-name NAME]
[--created-after ISO] [--dry-run]``."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import pausing, services
from workflows.exceptions import ConsoleError


class Command(BaseCommand):
    """Cancel an active run, or every active run of a workflow that matches."""

    help = (
        "Cancel an active run (it runs no further step), or with --workflow every active "
        "run of that workflow matching the filters, in batches, with no upper bound."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """RUN_ID, or --workflow and its filters; an optional workspace guard."""
        parser.add_argument("run_id", nargs="?", help="the run's id (a UUID)")
        parser.add_argument(
            "--workspace", default=None, help="only runs in this workspace (refuse others)"
        )
        bulk = parser.add_argument_group("in bulk")
        bulk.add_argument("--workflow", default=None, help="cancel the active runs of this id")
        bulk.add_argument(
            "--status", action="append", default=None, help="only runs with this status (repeat)"
        )
        bulk.add_argument("--event-name", default=None, help="only runs triggered by this name")
        bulk.add_argument(
            "--created-after", default=None, help="only runs created after this ISO time"
        )
        bulk.add_argument(
            "--dry-run", action="store_true", help="print how many would be cancelled"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Cancel and say what happened."""
        if options["workflow"] is not None:
            return self._bulk(options)
        if options["run_id"] is None:
            raise CommandError("give a RUN_ID, or --workflow ID to cancel runs in bulk")
        bulk_only = ("status", "event_name", "created_after")
        if options["dry_run"] or any(options[name] for name in bulk_only):
            raise CommandError(
                "--status, --event-name, --created-after and --dry-run go with --workflow"
            )
        try:
            cancelled = services.cancel_run(options["run_id"], workspace=options["workspace"])
        except ConsoleError as exc:
            raise CommandError(str(exc)) from None
        if not cancelled:
            status = services.get_run(options["run_id"]).status
            raise CommandError(f"run {options['run_id']} had already finished ({status})")
        self.stdout.write(self.style.SUCCESS(f"Cancelled run {options['run_id']}."))

    def _bulk(self, options: dict[str, Any]) -> None:
        if options["run_id"] is not None:
            raise CommandError("give either a RUN_ID or --workflow, not both")
        try:
            after = options["created_after"]
            if after is not None:
                after = services.parse_when(after, "--created-after")
            total = 0
            for total in pausing.cancel_runs(
                options["workflow"],
                statuses=options["status"],
                workspace=options["workspace"],
                event_name=options["event_name"],
                created_after=after,
                dry_run=options["dry_run"],
            ):
                if not options["dry_run"] and options["verbosity"] > 1:
                    self.stdout.write(f"… {total} cancelled")
        except ConsoleError as exc:
            raise CommandError(str(exc)) from None
        if options["dry_run"]:
            self.stdout.write(f"{total} run(s) would be cancelled.")
        else:
            self.stdout.write(self.style.SUCCESS(f"Cancelled {total} run(s)."))
