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


def event(name: Any, data: Any = None, ts: Any = None, id: Any = None) -> EventSpec:
    """Validate one event's fields; raise :class:`EventError` naming what is wrong."""
    settings = conf.get()
    if not isinstance(name, str):
        raise EventError(f"event name must be a string, got {type(name).__name__}")
    if not name:
        raise EventError("event name must not be empty")
    if len(name) > settings.MAX_NAME_LENGTH:
        raise EventError(
            f"event name is {len(name)} characters long; the limit is {settings.MAX_NAME_LENGTH}"
        )
    if not _NAME_RE.match(name):
        raise EventError(
            f"event name {name[:80]!r} is malformed: use printable characters without "
            "spaces, control characters or '*' (e.g. 'billing/invoice.paid')"
        )
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
        if _string_problem(id) or any(ord(c) < 32 or ord(c) == 127 for c in id):
            raise EventError("id must not contain control characters")
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
