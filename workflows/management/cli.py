"""What the management commands share: argument types that name their flag, safe output.

An argument type raises ``argparse.ArgumentTypeError``, which argparse reports with the
flag it belongs to (``argument --older-than: must be …``): on the command line as a
usage error (exit status 2), from ``call_command`` as a ``CommandError``. The values
themselves are checked by :mod:`workflows.services`, as for any other caller.

:func:`printable` escapes what a terminal would obey rather than show (escape sequences,
bidi overrides), since run and step fields hold text written by workflow code.
"""

import argparse
import unicodedata
from collections.abc import Callable
from typing import Any

from workflows import retention
from workflows.exceptions import ConsoleError


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argument type: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def days(text: str) -> float:
    """An argument type: a finite age in days that a date can be computed from."""
    try:
        return retention.check_age_days(float(text.strip()))
    except (ValueError, ConsoleError):  # not a number; NaN, infinite or out of range
        raise argparse.ArgumentTypeError(
            f"must be a number of days from 0 to {retention.MAX_AGE_DAYS}, got {text!r}"
        ) from None


#: Unicode categories a terminal may act on instead of showing: controls (C0, C1), format
#: characters (bidi overrides, zero-width), surrogates, private and unassigned code
#: points, and line and paragraph separators.
_ESCAPED = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(value: Any, *, keep_newlines: bool = False) -> str:
    """``str(value)`` with control, format (bidi, zero-width) and surrogate code points escaped.

    ``keep_newlines`` keeps line breaks (for a traceback); every other such character is
    shown as ``\\x1b``, ``\\u202e``… so it cannot recolour the terminal, move its
    cursor or reorder what is read.
    """
    text = str(value)
    if text.isprintable():  # the usual case: nothing to escape (and fast)
        return text
    kept = "\n" if keep_newlines else ""
    return "".join(
        char if char in kept or unicodedata.category(char) not in _ESCAPED else _escape(char)
        for char in text
    )
