"""``list_schedules [--workflow W] [--workspace SLUG]``: schedules and their next fire time."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from workflows import schedules


class Command(BaseCommand):
    """A table of every schedule: database ones and the ``cron=`` of workflows."""

    help = (
        "List schedules (workflows.schedules and @workflow(cron=…)) with their next fire "
        "time, soonest first; paused ones last."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """Filters."""
        parser.add_argument("--workflow", help="only the schedules of this workflow id")
        parser.add_argument("--workspace", help="only the schedules of this workspace slug")

    def handle(self, *args: Any, **options: Any) -> None:
        """Print one line per schedule (one per cron entry)."""
        rows = [
            row
            for row in schedules.listing()
            if options["workflow"] in (None, row.workflow_id)
            and options["workspace"] in (None, row.workspace)
        ]
        if not rows:
            self.stdout.write("No schedules.")
            return
        rows.sort(
            key=lambda row: (row.next_fire_at is None, row.next_fire_at or 0, row.schedule_id)
        )
        header = ("SCHEDULE", "WORKFLOW", "SOURCE", "WORKSPACE", "NEXT FIRE (UTC)", "CRON")
        lines = [header]
        for row in rows:
            when = "paused" if row.paused else "never"
            if row.next_fire_at is not None:
                when = row.next_fire_at.strftime("%Y-%m-%d %H:%M:%S")
            for index, entry in enumerate(row.entries):
                first = index == 0
                lines.append(
                    (
                        row.schedule_id if first else "",
                        row.workflow_id if first else "",
                        row.source if first else "",
                        row.workspace if first else "",
                        when if first else "",
                        entry,
                    )
                )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
        for line in lines:
            cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
            self.stdout.write("  ".join([*cells, line[-1]]).rstrip())
