"""The options that decide whether an event starts a run: ``rate_limit``, ``debounce``,
``batch_events``, ``singleton`` and ``idempotency`` (see docs/flow-control.md)."""

from dataclasses import dataclass
from typing import Any

from workflows.exceptions import WorkflowDefinitionError


@dataclass(frozen=True)
class Admission:
    """A workflow's admission options, as checked."""

    def __bool__(self) -> bool:
        return False


NONE = Admission()


def parse(
    id: str,
    *,
    rate_limit: Any,
    debounce: Any,
    batch_events: Any,
    singleton: Any,
    idempotency: Any,
) -> Admission:
    """Check the admission options of workflow ``id``."""
    given = {
        "rate_limit": rate_limit,
        "debounce": debounce,
        "batch_events": batch_events,
        "singleton": singleton,
        "idempotency": idempotency,
    }
    named = sorted(name for name, value in given.items() if value is not None)
    if named:
        raise WorkflowDefinitionError(f"workflow {id!r}: {', '.join(named)} not built yet")
    return NONE
