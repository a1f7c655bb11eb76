"""``ctx``: what a workflow function receives, and ``ctx.step``, its step API."""

from workflows.coordination import CoordinationSteps
from workflows.execution import Execution
from workflows.models import BatchEvent
from workflows.payloads import EventView
from workflows.steps import BasicSteps


class Step(BasicSteps, CoordinationSteps):
    """The ``ctx.step`` object of a run: every step kind, over one execution.

    ``run``, ``send_event``, ``sleep`` and ``sleep_until`` (:mod:`workflows.steps`);
    ``wait_for_event``, ``invoke`` and ``parallel`` (:mod:`workflows.coordination`).
    """


class Context:
    """The argument of a workflow function.

    ``event`` (``.id``, ``.name``, ``.data``, ``.ts``), ``events`` (the batch of a
    ``batch_events`` workflow; else ``[event]``), ``step``, ``run_id``,
    ``attempt`` (0 on the first try of the current step), ``workspace`` (slug),
    ``logger``, and :meth:`patched` / :meth:`deprecate_patch` for changing the code
    under runs that are mid-way.
    """

    def __init__(self, execution: Execution) -> None:
        self._ex = execution
        run = execution.run
        self.event = EventView.of(run.event)
        self.step = Step(execution)
        # A branch of step.parallel acts for its parent: the workflow's run.
        self.run_id = str(run.parent_id if run.is_branch else run.pk)
        self.workspace: str = run.workspace.slug
        self.logger = execution.logger
        self._events: list[EventView] | None = None

    def patched(self, patch_id: str) -> bool:
        """Whether this run takes the new path of the change named ``patch_id``.

        ``True`` for a run that holds the patch's marker, or that had recorded nothing
        at or after this point (the marker is then recorded); ``False`` for a run that
        had already gone past this point on the old code. A run always gets the same
        answer for a patch, in a loop too; one patch id belongs to one place in the code.
        """
        return self._ex.patched(patch_id)

    def deprecate_patch(self, patch_id: str) -> None:
        """Mark the patch ``patch_id`` whose old path has been removed from the code.

        Runs with its marker and runs without it both replay; no marker is recorded.
        Deploy it once no active run took the old path (``check_workflows`` tells).
        """
        self._ex.patched(patch_id, deprecated=True)

    @property
    def events(self) -> list[EventView]:
        """The run's events: a batch's members in arrival order, else ``[ctx.event]``.

        Read from the stored batch membership (once per execution, when first used), so
        a resumed or replayed run sees the same list.
        """
        if self._events is None:
            run = self._ex.run
            members = BatchEvent.objects.events_of(run.event_id, run.workflow_id)
            self._events = [EventView.of(e) for e in members] if members else [self.event]
        return self._events

    @property
    def attempt(self) -> int:
        """0 on the first try of the step being executed, n on its n-th retry."""
        return self._ex.attempt

    def __repr__(self) -> str:
        return f"<Context run={self.run_id} event={self.event.name!r}>"
