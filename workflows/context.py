"""``ctx``: what a workflow function receives."""

import logging
from typing import TYPE_CHECKING, Any

from workflows.context_types import EventView
from workflows.steps import Step

if TYPE_CHECKING:
    from workflows.engine import Execution


class RunLogger(logging.LoggerAdapter):
    """Prefixes every message with the workflow and run it comes from."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        return f"[{extra.get('workflow_id')} {extra.get('run_id')}] {msg}", kwargs


class Context:
    """The argument of a workflow function.

    ``event`` (``.id``, ``.name``, ``.data``, ``.ts``), ``step``, ``run_id``,
    ``attempt`` (0 on the first try of the current step), ``workspace`` (slug) and
    ``logger``.
    """

    def __init__(self, execution: "Execution") -> None:
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
