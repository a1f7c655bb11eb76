"""Cron expressions: parsing ``cron=`` entries and finding their time slots.

An entry is five fields (minute precision) or six (seconds first), optionally prefixed
by ``TZ=<IANA zone> `` (default UTC). Fields are parsed and matched by cronsim
(``cronsim.CronSim``); this module adds the zone and the daylight-saving rules, on
wall-clock times:

- a local time that does not exist (the hour skipped when clocks go forward) is no
  slot at all;
- a local time that occurs twice (the hour repeated when clocks go back) is one slot,
  at its first occurrence.

A slot is a whole second, given as Unix milliseconds. The functions are pure: the
dispatcher calls :func:`next_slot` once per fired slot (never per pass), and
:func:`latest_slot` only when it catches up after slots were missed.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

#: Longest ``cron`` entry, in characters.
MAX_LENGTH = 200
_FIELDS = {
    5: ("minute", "hour", "day-of-month", "month", "day-of-week"),
    6: ("second", "minute", "hour", "day-of-month", "month", "day-of-week"),
}


@dataclass(frozen=True)
class Cron:
    """One parsed ``cron`` entry."""

    #: The entry exactly as declared (``TZ=`` prefix included).
    entry: str
    #: The fields, without the prefix.
    expression: str
    zone: ZoneInfo

    @property
    def has_seconds(self) -> bool:
        """Whether the expression has the seconds field (six fields)."""
        return len(self.expression.split()) == 6


class CronError(ValueError):
    """A ``cron`` entry that cannot be parsed; the message says where and why."""


def parse(entry: str) -> Cron:
    """Parse ``entry``; raise :class:`CronError` naming the position of what is wrong."""
    if not isinstance(entry, str) or not entry.strip():
        raise CronError(f"a cron entry must be a non-empty string, got {entry!r}")
    return _parse(entry)


@lru_cache(maxsize=4096)
def _parse(entry: str) -> Cron:
    if len(entry) > MAX_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in entry):
        raise CronError(
            f"cron entry {entry[:80]!r} must be at most {MAX_LENGTH} printable characters"
        )
    expression, offset, zone = entry, 0, ZoneInfo("UTC")
    if entry.startswith("TZ="):
        name, _, rest = entry[3:].partition(" ")
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise CronError(
                f"cron entry {entry!r}: unknown time zone {name!r} at position 4; use an "
                "IANA name such as 'Europe/Paris' or 'America/New_York'"
            ) from None
        offset = 3 + len(name) + 1
        expression = rest
    fields = expression.split()
    if len(fields) not in _FIELDS:
        raise CronError(
            f"cron entry {entry!r} has {len(fields)} fields at position {offset + 1}; use "
            "five (minute hour day-of-month month day-of-week) or six (seconds first), "
            "optionally after 'TZ=<zone> '"
        )
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise CronError(_where(entry, offset, expression, str(exc))) from None
    return Cron(entry=entry, expression=" ".join(fields), zone=zone)


def _where(entry: str, offset: int, expression: str, problem: str) -> str:
    """Say which field ``problem`` (cronsim's "Bad minute") is about, and where it is."""
    fields = expression.split()
    names = _FIELDS[len(fields)]
    position, cursor = offset + 1, 0
    for index, field in enumerate(fields):
        start = expression.index(field, cursor)
        cursor = start + len(field)
        if names[index] in problem.lower():
            position = offset + start + 1
            return (
                f"cron entry {entry!r}: {names[index]} field {field!r} at position "
                f"{position} is invalid ({problem})"
            )
    return f"cron entry {entry!r} at position {position}: {problem}"


def _instant(wall: datetime, zone: ZoneInfo) -> datetime | None:
    """The UTC instant of the naive local time ``wall``: its first occurrence, or
    ``None`` if that local time does not exist."""
    local = wall.replace(tzinfo=zone, fold=0)
    instant = local.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) != wall:
        return None  # in the gap of a forward change
    return instant


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def to_ms(instant: datetime) -> int:
    """Unix milliseconds of an aware datetime."""
    return int(instant.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    """The aware UTC datetime of Unix milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def next_slot(cron: Cron, after_ms: int) -> int | None:
    """The first slot strictly after ``after_ms``; ``None`` if there is none for 50 years."""
    after = from_ms(after_ms)
    try:
        for wall in CronSim(cron.expression, _wall(after, cron.zone)):
            instant = _instant(wall, cron.zone)
            # A wall time before ``after`` in the repeated hour: already had its slot.
            if instant is not None and to_ms(instant) > after_ms:
                return to_ms(instant)
    except StopIteration:
        pass
    return None


def latest_slot(cron: Cron, at_ms: int) -> int | None:
    """The last slot at or before ``at_ms``; ``None`` if there is none for 50 years."""
    local = from_ms(at_ms).astimezone(cron.zone)
    start = local.replace(tzinfo=None, microsecond=0)
    if local.fold:
        # In the second pass of a repeated hour, later wall times of that hour had their
        # slot already (at their first occurrence): search back from them, and filter.
        start += local.replace(fold=0).utcoffset() - local.utcoffset()
    start += timedelta(seconds=1)  # cronsim's reverse search excludes its start
    try:
        for wall in CronSim(cron.expression, start, reverse=True):
            instant = _instant(wall, cron.zone)
            if instant is not None and to_ms(instant) <= at_ms:
                return to_ms(instant)
    except StopIteration:
        pass
    return None


def matches(cron: Cron, slot_ms: int) -> bool:
    """Whether ``slot_ms`` is a slot of ``cron``."""
    return next_slot(cron, slot_ms - 1) == slot_ms
