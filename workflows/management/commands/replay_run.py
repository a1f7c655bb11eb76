"""``replay_run RUN_ID [--from-step STEP_ID]``, or a bulk replay ``replay_run --workflow W …``."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workflows import services
from workflows.exceptions import ConsoleError
from workflows.management import cli


class Command(BaseCommand):
    """Replay one run (from the start or a step), or every run of a selection."""

    help = (
        "Replay a run as a new run of the same workflow and trigger event; with "
        "--from-step, keep the steps before it. Without RUN_ID, replay every run matching "
        "--workflow/--status/--since/--until, with progress and a summary."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """One run, or a selection."""
        parser.add_argument("run_id", nargs="?", help="the run's id (a UUID)")
        parser.add_argument("--from-step", default=None, help="a step id of the run")
        parser.add_argument("--workspace", default=None, help="a workspace slug (guard/filter)")
        parser.add_argument("--workflow", help="select runs of this workflow")
        parser.add_argument("--status", help="select runs with this status (e.g. failed)")
        parser.add_argument("--since", help="select runs created at or after (ISO)")
        parser.add_argument("--until", help="select runs created before (ISO)")
        parser.add_argument(
            "--limit",
            type=cli.whole_number(1, 1_000_000_000),
            default=None,
            help="replay at most N runs",
        )
        parser.add_argument("--dry-run", action="store_true", help="only count the selection")

    def handle(self, *args: Any, **options: Any) -> None:
        """Dispatch to one replay or a bulk replay."""
        selecting = any(options[k] for k in ("workflow", "status", "since", "until"))
        try:
            if options["run_id"]:
                if selecting:
                    raise CommandError(
                        "give either RUN_ID or selection options (--workflow, --status, "
                        "--since, --until), not both"
                    )
                self._one(options)
            elif selecting:
                if options["from_step"]:
                    raise CommandError("--from-step needs a RUN_ID")
                self._many(options)
            else:
                raise CommandError("give a RUN_ID, or select runs with --workflow/--status/--since")
        except ConsoleError as exc:
            raise CommandError(str(exc)) from None

    def _one(self, options: dict[str, Any]) -> None:
        step = options["from_step"]
        run = services.replay_run(options["run_id"], from_step=step, workspace=options["workspace"])
        where = f" from step {step!r}, keeping {run.steps.count()} step(s)," if step else ""
        self.stdout.write(str(run.pk))
        self.stdout.write(
            self.style.SUCCESS(f"Replayed run {options['run_id']}{where} as {run.pk}.")
        )

    def _many(self, options: dict[str, Any]) -> None:
        if options["workflow"]:
            # A selection of runs that could never be replayed is a mistake (a typo, or
            # code not deployed here): say so and exit non-zero, not "0 of 0 replayed".
            services.check_replayable_workflow(options["workflow"])
        runs = services.select_runs(
            workflow=options["workflow"],
            status=options["status"],
            workspace=options["workspace"],
            since=services.parse_when(options["since"]) if options["since"] else None,
            until=services.parse_when(options["until"], "--until") if options["until"] else None,
        )
        total = runs.count()
        if options["limit"] is not None:
            total = min(total, options["limit"])
        if options["dry_run"]:
            self.stdout.write(f"Would replay {total} run(s).")
            return
        done = failed = 0
        for n, outcome in enumerate(services.replay_many(runs, limit=options["limit"]), 1):
            if outcome.replay is not None:
                done += 1
                self.stdout.write(f"[{n}/{total}] {outcome.original_id} -> {outcome.replay.pk}")
            else:
                failed += 1
                self.stderr.write(
                    f"[{n}/{total}] {outcome.original_id} not replayed: {outcome.error}"
                )
        summary = f"Replayed {done} of {total} run(s); {failed} failed."
        self.stdout.write(
            self.style.SUCCESS(summary) if not failed else self.style.WARNING(summary)
        )
        if failed:
            raise CommandError(f"{failed} run(s) could not be replayed")
