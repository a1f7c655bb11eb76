"""``list_runs [--status S] [--workflow W] [--workflow-version V] [--workspace SLUG]
[--since ISO] [--limit N]``."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus.models import Workspace
from workflows import services, timeline
from workflows.exceptions import ConsoleError
from workflows.management import cli
from workflows.models import RunStatus


class Command(BaseCommand):
    """A table of runs, newest first."""

    help = "List runs, newest first, as a table."

    def add_arguments(self, parser: CommandParser) -> None:
        """Filters and a limit."""
        parser.add_argument("--status", help=f"one of: {', '.join(RunStatus.values)}")
        parser.add_argument("--workflow", help="a workflow id")
        parser.add_argument(
            "--workflow-version",
            help="runs started under this version label (@workflow(version=…); '' for none)",
        )
        parser.add_argument("--workspace", help="a workspace slug")
        parser.add_argument("--since", help="created at or after this ISO date/datetime")
        parser.add_argument(
            "--limit", type=cli.whole_number(1, 100_000), default=50, help="rows to show"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Query and print."""
        slug = options["workspace"]
        if slug and not Workspace.objects.filter(slug=slug).exists():
            raise CommandError(f"unknown workspace {slug!r}")
        try:
            since = services.parse_when(options["since"]) if options["since"] else None
            runs = services.select_runs(
                workflow=options["workflow"],
                status=options["status"],
                workspace=slug,
                since=since,
                version=options["workflow_version"],
            )
        except ConsoleError as exc:
            raise CommandError(str(exc)) from None
        rows = list(runs.select_related("workspace")[: options["limit"] + 1])
        more = len(rows) > options["limit"]
        rows = rows[: options["limit"]]
        if not rows:
            self.stdout.write("No runs match.")
            return
        header = (
            "ID", "WORKFLOW", "VERSION", "STATUS", "WORKSPACE", "CREATED", "DURATION", "ATTEMPT"
        )  # fmt: skip
        table = [header]
        for run in rows:
            took = "—"
            if run.started_at and run.finished_at:
                took = timeline.format_seconds((run.finished_at - run.started_at).total_seconds())
            table.append(
                (
                    str(run.pk),
                    cli.printable(run.workflow_id),
                    run.version or "—",
                    run.status,
                    cli.printable(run.workspace.slug),
                    run.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    took,
                    str(run.attempt),
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            self.stdout.write(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
        if more:
            self.stdout.write(f"(first {options['limit']} shown; use --limit or filters)")
