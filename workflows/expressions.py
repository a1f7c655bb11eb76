"""The CEL expressions of the flow-control options: keys, priorities, idempotency values.

An option's ``key`` (or ``priority``'s ``run``, or ``idempotency``) is a CEL expression
over ``event`` (the trigger event: ``name``, ``data``, ``ts``, ``id``) and ``workspace``
(the run's workspace slug). It is checked when ``@workflow`` runs and evaluated once,
when the run is created; the result is stored on the run, so new code never moves a
running run to another group.

A key's value becomes a string: a string as it is, anything else as its JSON text
(``true``, ``1``, ``1.0``). An expression that fails on an event (a missing field, a
type mismatch) gives the empty key ``""`` and a warning naming the run.
"""

import functools
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celparser, celtypes

logger = logging.getLogger("workflows.expressions")

#: Longest stored key (the width of the key columns); longer values are cut to it.
MAX_KEY_LENGTH = 255
#: Longest expression accepted.
MAX_EXPRESSION_LENGTH = 4096


@dataclass(frozen=True)
class Expression:
    """A checked CEL expression, with where it was declared (for messages)."""

    source: str
    where: str

    def evaluate(self, event: dict[str, Any], workspace: str) -> Any:
        """The expression's value for ``event``; raises :class:`EvaluationError`."""
        path = _path(self.source)
        if path is not None:
            return _walk(path, event, workspace)
        program = _program(self.source)
        try:
            result = program.evaluate(
                {"event": celpy.json_to_cel(event), "workspace": celtypes.StringType(workspace)}
            )
        except Exception as exc:  # CELEvalError and friends
            raise EvaluationError(str(exc)) from None
        if isinstance(result, Exception):
            raise EvaluationError(str(result))
        return _plain(result)

    def key(self, event: dict[str, Any], workspace: str, *, run: Any = None) -> str:
        """The value as a key string; ``""`` (and a warning) when it does not evaluate."""
        try:
            value = self.evaluate(event, workspace)
        except EvaluationError as exc:
            _warn(self, run, event, exc)
            return ""
        return as_key(value)

    def seconds(
        self, event: dict[str, Any], workspace: str, *, low: int, high: int, run: Any = None
    ) -> int:
        """The value as whole seconds clamped to ``low..high``; 0 when it is no number."""
        try:
            value = self.evaluate(event, workspace)
        except EvaluationError as exc:
            _warn(self, run, event, exc)
            return 0
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            return 0
        return max(low, min(high, int(value)))


class EvaluationError(Exception):
    """An expression that failed on a given event."""


def compile(source: Any, where: str) -> Expression:
    """Check ``source`` as CEL; ``ValueError`` naming ``where`` and the position if not."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError(
            f"{where} must be a CEL expression such as 'event.data.accountId' "
            f"(a non-empty string), got {source!r}"
        )
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise ValueError(
            f"{where}: the expression is longer than {MAX_EXPRESSION_LENGTH} characters"
        )
    try:
        _program(source)
    except celparser.CELParseError as exc:
        at = f" at line {exc.line}, column {exc.column}" if getattr(exc, "line", None) else ""
        raise ValueError(f"{where}: the CEL expression {source!r} does not parse{at}") from None
    return Expression(source, where)


def as_key(value: Any) -> str:
    """A key's text: a string as it is, anything else as its JSON text."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_KEY_LENGTH]


_env = celpy.Environment()


@functools.lru_cache(maxsize=512)
def _program(source: str) -> Any:
    return _env.program(_env.compile(source))


_PATH_RE = re.compile(r"^\s*(event(\.[A-Za-z_][A-Za-z0-9_]*)+|workspace)\s*$")


@functools.lru_cache(maxsize=512)
def _path(source: str) -> tuple[str, ...] | None:
    """A plain field path (``event.data.accountId``, ``workspace``), or ``None``.

    Keys are evaluated on every event that may start a run: walking the event's dict
    gives the value CEL would (the same JSON value, the same error for a missing field),
    without the interpreter's cost, which is as much as a database statement.
    """
    if not _PATH_RE.match(source) or source.strip() in _CEL_WORDS:
        return None
    return tuple(source.strip().split("."))


_CEL_WORDS = frozenset({"true", "false", "null"})


def _walk(path: tuple[str, ...], event: dict[str, Any], workspace: str) -> Any:
    if path == ("workspace",):
        return workspace
    value: Any = event
    for name in path[1:]:
        if not isinstance(value, dict):
            raise EvaluationError(f"no such member {name!r}: {type(value).__name__} has none")
        if name not in value:
            raise EvaluationError(f"no such member in mapping: {name!r}")
        value = value[name]
    return value


def _plain(value: Any) -> Any:
    """A CEL value as the JSON value it stands for."""
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, celtypes.IntType | celtypes.UintType):
        return int(value)
    if isinstance(value, celtypes.DoubleType):
        return float(value)
    if isinstance(value, celtypes.StringType):
        return str(value)
    if isinstance(value, celtypes.MapType):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, celtypes.ListType):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, celtypes.NullType):
        return None
    return str(value)


def _warn(expression: Expression, run: Any, event: dict[str, Any], exc: Exception) -> None:
    logger.warning(
        "%s: %r did not evaluate for event %s (run %s): %s; using the empty key",
        expression.where,
        expression.source,
        event.get("id"),
        getattr(run, "pk", run),
        exc,
        extra={"run_id": str(getattr(run, "pk", run) or ""), "event_id": event.get("id")},
    )
