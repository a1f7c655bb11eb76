"""``ctx``: what a workflow function receives, and ``ctx.step``, its step API."""

from workflows.coordination import CoordinationSteps
from workflows.execution import Execution
from workflows.payloads import EventView
from workflows.steps import BasicSteps


class Step(BasicSteps, CoordinationSteps):
    """The ``ctx.step`` object of a run: every step kind, over one execution.

    ``run``, ``send_event``, ``sleep`` and ``sleep_until`` (:mod:`workflows.steps`);
    ``wait_for_event``, ``invoke`` and ``parallel`` (:mod:`workflows.coordination`).
    """


class Context:
    """The argument of a workflow function.

    ``event`` (``.id``, ``.name``, ``.data``, ``.ts``), ``step``, ``run_id``,
    ``attempt`` (0 on the first try of the current step), ``workspace`` (slug) and
    ``logger``.
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

    @property
    def attempt(self) -> int:
        """0 on the first try of the step being executed, n on its n-th retry."""
        return self._ex.attempt

    def __repr__(self) -> str:
        return f"<Context run={self.run_id} event={self.event.name!r}>"
