"""``show_run RUN_ID [--workspace SLUG] [--width N]``."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import services, timeline
from workflows.exceptions import ConsoleError
from workflows.management import cli


class Command(BaseCommand):
    """Print a run and a text timeline of its steps."""

    help = "Show a run: its fields, input, output, error and a timeline of its steps."

    def add_arguments(self, parser: CommandParser) -> None:
        """RUN_ID, a workspace guard and the bar width."""
        parser.add_argument("run_id", help="the run's id (a UUID)")
        parser.add_argument(
            "--workspace", default=None, help="refuse unless the run is in this workspace"
        )
        parser.add_argument(
            "--width", type=cli.whole_number(10, 500), default=40, help="width of the bars"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Load and print."""
        try:
            run = services.get_run(options["run_id"], workspace=options["workspace"])
        except ConsoleError as exc:
            raise CommandError(str(exc)) from None
        width = options["width"]

        def write(line: str, *, keep_newlines: bool = False) -> None:
            # Workflow code wrote these fields: show an escape sequence, never obey it.
            self.stdout.write(cli.printable(line, keep_newlines=keep_newlines))

        write(f"Run       {run.pk}")
        write(f"Workflow  {run.workflow_id}")
        write(f"Status    {run.status}")
        write(f"Workspace {run.workspace.slug}")
        write(f"Trigger   {run.event.name} ({run.event_id})")
        for label, value in (
            ("Parent", run.parent_id),
            ("Replay of", run.replay_of_id or ("a purged run" if run.is_replay else None)),
            ("Created", run.created_at),
            ("Started", run.started_at),
            ("Finished", run.finished_at),
        ):
            if value:
                write(f"{label:<9} {value}")
        for line in timeline.describe_flow(run):
            write(f"Flow      {line}")
        for line in timeline.describe_waits(run):
            write(f"Waits     {line}")
        children = list(run.children.order_by("created_at")[:50])
        for child in children:
            branch = f" branch {child.branch_index}" if child.is_branch else ""
            write(f"Child     {child.pk} {child.workflow_id}{branch} ({child.status})")
        write(f"Input     {json.dumps(run.event.data, ensure_ascii=False)}")
        if run.output is not None:
            write(f"Output    {json.dumps(run.output, ensure_ascii=False)}")
        if run.error:
            write(f"Error     {run.error.get('type')}: {run.error.get('message')}")
            if run.error.get("traceback"):
                write(str(run.error["traceback"]).rstrip(), keep_newlines=True)
        steps = list(run.steps.order_by("position"))
        if not steps:
            write("Steps     none yet")
            return
        tl = timeline.build(run, steps)
        write("")
        write(f"Steps ({len(steps)}), axis 0 to {timeline.format_seconds(tl.span)}:")
        name_width = min(max(len(s.step_id) for s in steps), 30)
        for row in tl.rows:
            step = row.step
            tries = f"x{row.tries}" if row.tries > 1 else ""
            write(
                f"{step.position:>4} {step.step_id[:name_width]:<{name_width}} "
                f"{step.kind:<14} {row.status:<11} {tries:<4} "
                f"{row.start_label:>9} {row.duration_label:>8} "
                f"|{timeline.text_bar(row, width)}|"
            )
