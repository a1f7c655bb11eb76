"""``check_workflows [--workflow ID]``: before a deploy, which active runs would break."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import deploycheck, services
from workflows.exceptions import ConsoleError


class Command(BaseCommand):
    """Replay every active run against the code loaded now; list the runs that would break."""

    help = (
        "Replay the recorded steps of every active run against the current code (no step "
        "runs, nothing is written) and list each run that would hit a non-determinism, "
        "with its step; exits non-zero if there is any. Run it before a deploy, with the "
        "new code."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """An optional workflow id."""
        parser.add_argument("--workflow", default=None, help="check only runs of this workflow")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=deploycheck.BATCH_SIZE,
            help=f"runs read per batch (default {deploycheck.BATCH_SIZE})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Check, with a progress line on a terminal, and report."""
        tty = self.stderr.isatty()
        broken = checked = 0
        try:
            outcomes = services.check_workflows(
                options["workflow"], batch_size=options["batch_size"]
            )
            for outcome in outcomes:
                if isinstance(outcome, deploycheck.Progress):
                    checked = outcome.checked
                    if tty:
                        self.stderr.write(
                            f"\rchecked {outcome.checked}/{outcome.total} run(s), "
                            f"{broken} would break",
                            ending="",
                        )
                    continue
                broken += 1
                if tty:
                    self.stderr.write("\r\033[K", ending="")
                step = f" step {outcome.step_id!r}" if outcome.step_id else ""
                self.stdout.write(
                    f"{outcome.run_id} {outcome.workflow_id}{step}: {outcome.reason}"[:2000]
                )
        except ConsoleError as exc:
            raise CommandError(str(exc)) from None
        if tty:
            self.stderr.write("\r\033[K", ending="")
        if broken:
            raise CommandError(f"{broken} of {checked} active run(s) would break on this code")
        self.stdout.write(self.style.SUCCESS(f"All {checked} active run(s) fit this code."))
