"""Events as workflow code sees them and as memos and CEL expressions store them."""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EventView:
    """An event as a workflow sees it (``ctx.event``, ``step.wait_for_event``)."""

    id: str
    name: str
    data: dict[str, Any]
    ts: int

    @classmethod
    def of(cls, event: Any) -> "EventView":
        """The view of an ``eventbus.models.Event``."""
        return cls(id=str(event.id), name=event.name, data=event.data, ts=event.ts)


def event_dict(event: Any) -> dict[str, Any]:
    """An event as stored in a memo and as seen by CEL's ``event``/``async``."""
    return {"id": str(event.id), "name": event.name, "data": event.data, "ts": event.ts}
