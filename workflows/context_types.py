"""Plain values handed to workflow code."""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EventView:
    """An event as a workflow sees it."""

    id: str
    name: str
    data: dict[str, Any]
    ts: int

    @classmethod
    def of(cls, event: Any) -> "EventView":
        """The view of an ``eventbus.models.Event``."""
        return cls(id=str(event.id), name=event.name, data=event.data, ts=event.ts)
