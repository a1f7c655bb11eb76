"""Durations as users write them: a ``timedelta``, seconds, or text such as ``"3d"``.

Text is one or more ``<number><unit>`` parts with the units ``ms``, ``s``, ``m``, ``h``,
``d`` and ``w``, as in ``"90s"``, ``"1h30m"`` or ``"7d"`` (the form Inngest users know).
"""

import math
import re
from datetime import timedelta
from typing import Any

_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: Longest duration accepted anywhere (about 100 years).
MAX_SECONDS = 100 * 365 * 86400

Duration = timedelta | int | float | str


def parse(value: Any, where: str, *, allow_zero: bool = False) -> timedelta:
    """``value`` as a ``timedelta``; ``ValueError`` naming ``where`` and what is allowed."""
    allowed = 'a timedelta, a number of seconds, or text such as "30s", "5m", "2h", "7d"'
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _PART_RE.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{where}: {value!r} is not a duration; use {allowed}")
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    else:
        raise ValueError(f"{where}: expected {allowed}, got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        least = "zero or more" if allow_zero else "more than zero"
        raise ValueError(f"{where}: the duration must be {least}, got {value!r}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{where}: {value!r} is longer than the limit of 100 years")
    return timedelta(seconds=seconds)
