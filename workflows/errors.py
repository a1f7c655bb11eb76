"""How errors are stored: a small JSON record that the admin and commands can show."""

import traceback
from typing import Any

#: Longest traceback kept, in characters (the end is kept: it names the failing line).
MAX_TRACEBACK = 20_000


def describe(exc: BaseException) -> dict[str, Any]:
    """``{"type", "message", "traceback"}`` of ``exc``."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(text) > MAX_TRACEBACK:
        text = "…" + text[-MAX_TRACEBACK:]
    return {
        "type": type(exc).__name__,
        "message": str(exc)[:5000],
        "traceback": text,
    }
