"""Validation of event input, done in full before anything is stored.

The JSON checker is strict on purpose: ``json.dumps`` would quietly turn ``{1: "a"}``
into ``{"1": "a"}`` and write ``NaN``, and PostgreSQL's ``jsonb`` refuses ``\\u0000``.
Each of those is refused here with the path of the offending value.
"""

import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from eventbus import conf
from eventbus.exceptions import EventError

# Names are free-form but printable: no whitespace, no control characters, and no "*",
# which is reserved for trigger patterns such as "agent/*".
_NAME_RE = re.compile(r"^[^\s*\x00-\x1f\x7f]+$")
# Year 1970 to 9999: what a datetime can hold.
MAX_TS_MS = 253_402_300_799_999
# Name prefixes that only the app which reserved them emits (see reserve_prefix).
_reserved_prefixes: set[str] = set()
#: A regex character class of what no name, slug, id or key may contain, as they make
#: look-alike names in the console: C0 and C1 controls, bidi marks, overrides and
#: isolates, zero-width characters, and lone surrogates.
INVISIBLE = "\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\ud800-\udfff"
_INVISIBLE_RE = re.compile(f"[{INVISIBLE}]")


@dataclass(frozen=True)
class EventSpec:
    """One validated event, ready to store."""

    name: str
    data: dict[str, Any]
    ts: int | None
    idempotency_key: str | None
    size: int


def json_error(value: Any, *, max_depth: int, where: str = "value") -> str | None:
    """Return why ``value`` is not plain JSON, or ``None`` when it is."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > max_depth:
            return f"{path}: nested deeper than {max_depth} levels"
        if item is None or isinstance(item, bool | int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"{path}: {item!r} is not allowed in JSON (only finite numbers)"
            continue
        if isinstance(item, str):
            problem = _string_problem(item)
            if problem:
                return f"{path}: {problem}"
            continue
        if isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    return (
                        f"{path}: key {key!r} is a {type(key).__name__}; "
                        "JSON object keys must be strings"
                    )
                problem = _string_problem(key)
                if problem:
                    return f"{path}: key {key[:40]!r}: {problem}"
                stack.append((sub, f"{path}.{key}", depth + 1))
            continue
        if isinstance(item, list | tuple):
            for index, sub in enumerate(item):
                stack.append((sub, f"{path}[{index}]", depth + 1))
            continue
        return (
            f"{path}: a {type(item).__name__} is not JSON-serialisable "
            "(allowed: dict with str keys, list, str, int, float, bool, None)"
        )
    return None


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "strings may not contain the NUL character (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "strings must be valid Unicode (found a lone surrogate)"
    return None


def encode_json(value: Any, *, max_depth: int, max_bytes: int, where: str) -> str:
    """Encode plain JSON or raise ``ValueError`` saying what is wrong and where."""
    problem = json_error(value, max_depth=max_depth, where=where)
    if problem:
        raise ValueError(problem)
    encoded = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    size = len(encoded.encode("utf-8"))
    if size > max_bytes:
        raise ValueError(f"{where} is {size} bytes encoded; the limit is {max_bytes} bytes")
    return encoded


def invisible_problem(text: str) -> str | None:
    """Why ``text`` may not be a name, slug, id or key (see ``INVISIBLE``), or ``None``."""
    found = _INVISIBLE_RE.search(text)
    if found is None:
        return None
    return (
        f"contains U+{ord(found.group()):04X}: control characters (C0, C1), bidirectional "
        "controls, zero-width characters and lone surrogates are not allowed"
    )


def event_name(value: Any, *, reserved_ok: bool = False) -> str:
    """Validate an event name; raise :class:`EventError` naming what is wrong.

    Names under a reserved prefix (:func:`reserve_prefix`) are refused unless
    ``reserved_ok=True``, which only the app that reserved it passes, to emit them (or
    to wait for them).
    """
    if not isinstance(value, str):
        raise EventError(f"event name must be a string, got {type(value).__name__}")
    if not value:
        raise EventError("event name must not be empty")
    limit = conf.get().MAX_NAME_LENGTH
    if len(value) > limit:
        raise EventError(f"event name is {len(value)} characters long; the limit is {limit}")
    if not _NAME_RE.match(value):
        raise EventError(
            f"event name {value[:80]!r} is malformed: use printable characters without "
            "spaces, control characters or '*' (e.g. 'billing/invoice.paid')"
        )
    problem = invisible_problem(value)
    if problem:
        raise EventError(f"event name {value[:80]!r} {problem}")
    reserved = next((p for p in _reserved_prefixes if value.startswith(p)), None)
    if reserved is not None and not reserved_ok:
        raise EventError(
            f"event name {value[:80]!r} is reserved: names beginning with {reserved!r} are "
            "emitted only by the app that owns them; use another prefix"
        )
    return value


def reserve_prefix(prefix: str) -> None:
    """Refuse event names beginning with ``prefix`` from every sender but its owner.

    Called once at start-up by the app whose own events they are (the workflow engine
    reserves its system events' prefix); its code then validates with ``reserved_ok``.
    """
    _reserved_prefixes.add(prefix)


def event(
    name: Any, data: Any = None, ts: Any = None, id: Any = None, *, reserved_ok: bool = False
) -> EventSpec:
    """Validate one event's fields; raise :class:`EventError` naming what is wrong.

    ``reserved_ok=True`` is for the engine's own events only (see :func:`event_name`).
    """
    settings = conf.get()
    name = event_name(name, reserved_ok=reserved_ok)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EventError(
            f"event data must be a JSON object (a dict with string keys), got {type(data).__name__}"
        )
    try:
        encoded = encode_json(
            data,
            max_depth=settings.MAX_DEPTH,
            max_bytes=settings.MAX_PAYLOAD_BYTES,
            where="data",
        )
    except ValueError as exc:
        raise EventError(f"event {name!r}: {exc}") from None
    if ts is not None:
        if isinstance(ts, bool) or not isinstance(ts, int | float):
            raise EventError(
                f"ts must be a number of Unix milliseconds (int), got {type(ts).__name__}"
            )
        if not math.isfinite(ts) or ts < 0 or ts > MAX_TS_MS:
            raise EventError(
                f"ts {ts!r} is out of range: give Unix milliseconds between 0 and "
                f"{MAX_TS_MS} (year 9999)"
            )
        ts = int(ts)
    if id is not None:
        if not isinstance(id, str) or not id:
            raise EventError("id (the idempotency key) must be a non-empty string")
        if len(id) > settings.MAX_NAME_LENGTH:
            raise EventError(
                f"id is {len(id)} characters long; the limit is {settings.MAX_NAME_LENGTH}"
            )
        found = _INVISIBLE_RE.search(id)
        if found:
            raise EventError(
                "id must not contain control characters (C0, C1), bidirectional controls, "
                f"zero-width characters or lone surrogates; found U+{ord(found.group()):04X}"
            )
    return EventSpec(
        name=name,
        data=json.loads(encoded),
        ts=ts,
        idempotency_key=id,
        size=len(encoded),
    )


def batch(items: Any) -> list[EventSpec]:
    """Validate a list of ``{"name", "data", "ts", "id"}`` dicts, all or nothing."""
    settings = conf.get()
    if isinstance(items, dict | str | bytes) or not hasattr(items, "__iter__"):
        raise EventError(
            "events must be a list of dicts with 'name' and optional 'data', 'ts', 'id'"
        )
    limit = settings.MAX_BATCH_SIZE
    # A sized batch says how big it is; from any other iterable read one past the
    # limit, never more, so a huge generator is refused in bounded memory.
    total = len(items) if hasattr(items, "__len__") else None
    if total is None or total <= limit:
        items = list(itertools.islice(iter(items), limit + 1))
        total = len(items) if len(items) <= limit else None
    if total == 0:
        raise EventError("events must not be empty")
    if total is None or total > limit:
        got = "more" if total is None else str(total)
        raise EventError(
            f"a batch holds at most {limit} events (EVENTBUS['MAX_BATCH_SIZE']); "
            f"got {got}: split it"
        )
    specs = []
    allowed = {"name", "data", "ts", "id"}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise EventError(f"events[{index}] must be a dict, got {type(item).__name__}")
        extra = set(item) - allowed
        if extra:
            raise EventError(
                f"events[{index}] has unknown keys {sorted(map(str, extra))}; "
                f"allowed: {sorted(allowed)}"
            )
        if "name" not in item:
            raise EventError(f"events[{index}] has no 'name'")
        try:
            specs.append(event(item["name"], item.get("data"), item.get("ts"), item.get("id")))
        except EventError as exc:
            raise EventError(f"events[{index}]: {exc}") from None
    return specs
