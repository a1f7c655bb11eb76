"""Errors raised by the event bus."""


class EventError(ValueError):
    """The event is invalid and nothing was stored."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class UnknownWorkspaceError(EventError):
    """No workspace has this slug."""


class EventKeyError(ValueError):
    """The event key cannot be created as asked; nothing was stored."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)
