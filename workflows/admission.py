"""The options that decide whether an event starts a run: ``rate_limit``, ``debounce``,
``batch_events``, ``singleton`` and ``idempotency`` (see docs/flow-control.md).

This module checks them when ``@workflow`` runs. Applying them is
:mod:`workflows.gates`, in the transaction that stores the event (or, for a debounce or
a batch that fires on its timer, the dispatcher's).
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from workflows import durations, expressions
from workflows.exceptions import WorkflowDefinitionError

#: Largest ``rate_limit`` limit: the window keeps one timestamp per run it let in.
MAX_RATE_LIMIT = 10_000
#: Largest ``batch_events`` ``max_size``.
MAX_BATCH_SIZE = 10_000
#: What ``singleton``'s ``mode`` may be.
SINGLETON_MODES = ("skip", "cancel")


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` runs created per key in any span of length ``period``."""

    limit: int
    period: timedelta
    key: expressions.Expression | None = None


@dataclass(frozen=True)
class Debounce:
    """Events of one key less than ``period`` apart collapse into one run (the last)."""

    period: timedelta
    key: expressions.Expression | None = None
    timeout: timedelta | None = None


@dataclass(frozen=True)
class BatchEvents:
    """One run per ``max_size`` events of a key, or ``timeout`` after the first of them."""

    max_size: int
    timeout: timedelta
    key: expressions.Expression | None = None


@dataclass(frozen=True)
class Singleton:
    """At most one active run per key: a new event is skipped or cancels the active run."""

    mode: str
    key: expressions.Expression | None = None


@dataclass(frozen=True)
class Admission:
    """A workflow's admission options, as checked."""

    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    batch: BatchEvents | None = None
    singleton: Singleton | None = None
    idempotency: expressions.Expression | None = None

    def __bool__(self) -> bool:
        return any((self.rate_limit, self.debounce, self.batch, self.singleton, self.idempotency))

    @property
    def collects(self) -> bool:
        """Whether events are gathered before a run exists (``debounce``, ``batch_events``)."""
        return self.debounce is not None or self.batch is not None

    @property
    def gates_creation(self) -> bool:
        """Whether creating a run is checked (``rate_limit``, ``singleton``, ``idempotency``)."""
        return bool(self.rate_limit or self.singleton or self.idempotency)


NONE = Admission()


def parse(
    id: str,
    *,
    rate_limit: Any,
    debounce: Any,
    batch_events: Any,
    singleton: Any,
    idempotency: Any,
) -> Admission:
    """Check the admission options of workflow ``id``; :class:`WorkflowDefinitionError`."""
    where = f"workflow {id!r}"
    if batch_events is not None:
        clash = [
            name
            for name, value in (
                ("debounce", debounce),
                ("singleton", singleton),
                ("idempotency", idempotency),
            )
            if value is not None
        ]
        if clash:
            raise WorkflowDefinitionError(
                f"{where}: batch_events cannot be combined with {' or '.join(clash)}: a batch "
                "run stands for many events, so there is no one event to debounce, to "
                "de-duplicate or to hold a singleton for; drop one of the options"
            )
    try:
        return Admission(
            rate_limit=_rate_limit(where, rate_limit),
            debounce=_debounce(where, debounce),
            batch=_batch(where, batch_events),
            singleton=_singleton(where, singleton),
            idempotency=(
                None
                if idempotency is None
                else expressions.compile(idempotency, f"{where}: idempotency")
            ),
        )
    except ValueError as exc:
        raise WorkflowDefinitionError(str(exc)) from None


def _dict(value: Any, where: str, example: str, allowed: tuple[str, ...], required: tuple) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a dict such as {example}, got {value!r}")
    unknown = sorted(str(k) for k in set(value) - set(allowed))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed: {', '.join(allowed)}")
    for name in required:
        if name not in value:
            raise ValueError(f"{where} needs a {name!r} (for example {example})")


def _whole(value: Any, where: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ValueError(f"{where} must be a whole number from 1 to {high}, got {value!r}")
    return value


def _key(value: dict[str, Any], where: str) -> expressions.Expression | None:
    key = value.get("key")
    return None if key is None else expressions.compile(key, f"{where} key")


def _rate_limit(where: str, value: Any) -> RateLimit | None:
    if value is None:
        return None
    at = f"{where}: rate_limit"
    example = '{"limit": 1, "period": "1h", "key": "event.data.userId"}'
    _dict(value, at, example, ("limit", "period", "key"), ("limit", "period"))
    return RateLimit(
        limit=_whole(value["limit"], f"{at} limit", MAX_RATE_LIMIT),
        period=durations.parse(value["period"], f"{at} period"),
        key=_key(value, at),
    )


def _debounce(where: str, value: Any) -> Debounce | None:
    if value is None:
        return None
    at = f"{where}: debounce"
    example = '{"period": "5s", "key": "event.data.userId", "timeout": "1m"}'
    _dict(value, at, example, ("period", "key", "timeout"), ("period",))
    timeout = value.get("timeout")
    return Debounce(
        period=durations.parse(value["period"], f"{at} period"),
        key=_key(value, at),
        timeout=None if timeout is None else durations.parse(timeout, f"{at} timeout"),
    )


def _batch(where: str, value: Any) -> BatchEvents | None:
    if value is None:
        return None
    at = f"{where}: batch_events"
    example = '{"max_size": 100, "timeout": "5s", "key": "event.data.accountId"}'
    _dict(value, at, example, ("max_size", "timeout", "key"), ("max_size", "timeout"))
    return BatchEvents(
        max_size=_whole(value["max_size"], f"{at} max_size", MAX_BATCH_SIZE),
        timeout=durations.parse(value["timeout"], f"{at} timeout"),
        key=_key(value, at),
    )


def _singleton(where: str, value: Any) -> Singleton | None:
    if value is None:
        return None
    at = f"{where}: singleton"
    example = '{"mode": "skip", "key": "event.data.accountId"}'
    _dict(value, at, example, ("mode", "key"), ("mode",))
    if value["mode"] not in SINGLETON_MODES:
        raise ValueError(f"{at} mode must be 'skip' or 'cancel', got {value['mode']!r}")
    return Singleton(mode=value["mode"], key=_key(value, at))
