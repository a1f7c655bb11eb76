"""Errors of the console (admin actions, management commands, :mod:`workflows.services`).

Each is a ``ValueError``: a bad argument, with a message that says what was wrong and
what is allowed. Commands turn them into ``CommandError``; the admin into a message.
"""


class ConsoleError(ValueError):
    """The console was given an argument it cannot act on."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class MalformedIdError(ConsoleError):
    """The id is not a UUID."""


class UnknownRunError(ConsoleError, LookupError):
    """No run has this id."""


class UnknownEventError(ConsoleError, LookupError):
    """No event has this id."""


class UnknownStepError(ConsoleError, LookupError):
    """The run has no step with this id."""


class WrongWorkspaceError(ConsoleError):
    """The run or event belongs to another workspace than the one named."""


class NotReplayableError(ConsoleError):
    """This run or event cannot be replayed (see the message for why)."""
