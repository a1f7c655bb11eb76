"""The options that shape when runs execute: ``concurrency``, ``throttle`` and ``priority``.

This module checks them when ``@workflow`` runs and works out, for a new run, the keys
it is stored with (:func:`keys_for`). Enforcing them is the run store's claim: see
:mod:`workflows.runstore` and docs/flow-control.md.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from eventbus import validation
from workflows import durations, expressions
from workflows.exceptions import WorkflowDefinitionError

#: Most ``concurrency`` entries one workflow may have.
MAX_CONCURRENCY_ENTRIES = 2
#: Largest limit accepted (a limit above it is no limit).
MAX_LIMIT = 100_000
#: Bounds of the ``priority`` offset, in seconds.
PRIORITY_RANGE = (-600, 600)
#: Longest pool name.
MAX_POOL_LENGTH = 100


@dataclass(frozen=True)
class Concurrency:
    """One ``concurrency`` entry: at most ``limit`` runs of its scope execute at once."""

    limit: int
    #: Whose limit it is: ``pool:<name>``, ``wf:<workflow id>``, or ``wf:<id>#2`` for
    #: a second keyed entry of the workflow (so that its groups never meet the first's).
    owner: str
    key: expressions.Expression | None = None
    pool: str | None = None

    def group(self, key: str) -> str:
        """The text that names the group of runs with key value ``key``."""
        return f"{self.owner}:{key}" if self.key is not None else self.owner


@dataclass(frozen=True)
class Throttle:
    """``throttle``: first starts per key spaced ``period / limit`` apart, plus a burst."""

    limit: int
    period: timedelta
    burst: int = 0
    key: expressions.Expression | None = None

    @property
    def interval(self) -> timedelta:
        """The spacing between two first starts of one key."""
        return self.period / self.limit


@dataclass(frozen=True)
class FlowControl:
    """A workflow's ``concurrency``, ``throttle`` and ``priority``, as checked."""

    concurrency: tuple[Concurrency, ...] = ()
    throttle: Throttle | None = None
    priority: expressions.Expression | None = None

    def __bool__(self) -> bool:
        return bool(self.concurrency or self.throttle or self.priority)


@dataclass(frozen=True)
class RunKeys:
    """What a new run is stored with: its limit scopes, throttle key and priority."""

    slots: tuple[str, ...] = ()
    throttle: str | None = None
    priority: int = 0


NONE = FlowControl()


def parse(id: str, *, concurrency: Any, throttle: Any, priority: Any) -> FlowControl:
    """Check the options of workflow ``id``; :class:`WorkflowDefinitionError` if bad."""
    try:
        return FlowControl(
            concurrency=_concurrency(id, concurrency),
            throttle=_throttle(id, throttle),
            priority=_priority(id, priority),
        )
    except ValueError as exc:
        raise WorkflowDefinitionError(str(exc)) from None


def keys_for(
    flow: FlowControl, workflow_id: str, event: dict[str, Any], workspace: str, *, run: Any = None
) -> RunKeys:
    """Evaluate the keys of a new run of ``workflow_id`` for its trigger ``event``."""
    if not flow:
        return RunKeys()
    slots = tuple(
        entry.group(entry.key.key(event, workspace, run=run) if entry.key else "")
        for entry in flow.concurrency
    )
    throttle = None
    if flow.throttle is not None:
        key = flow.throttle.key.key(event, workspace, run=run) if flow.throttle.key else ""
        throttle = f"{workflow_id}:{key}"
    low, high = PRIORITY_RANGE
    priority = (
        flow.priority.seconds(event, workspace, low=low, high=high, run=run)
        if flow.priority is not None
        else 0
    )
    return RunKeys(slots=slots, throttle=throttle, priority=priority)


def _limit(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise ValueError(
            f"{where}: limit must be a whole number from 1 to {MAX_LIMIT}, got {value!r}"
        )
    return value


def _known(entry: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed: {', '.join(allowed)}")


def _concurrency(id: str, value: Any) -> tuple[Concurrency, ...]:
    where = f"workflow {id!r}: concurrency"
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        return (Concurrency(limit=_limit(value, where), owner=f"wf:{id}"),)
    entries = [value] if isinstance(value, dict) else value
    if not isinstance(entries, list | tuple) or not entries:
        raise ValueError(
            f"{where} must be a whole number, a dict such as "
            f'{{"limit": 2, "key": "event.data.accountId"}}, or a list of at most '
            f"{MAX_CONCURRENCY_ENTRIES} such dicts; got {value!r}"
        )
    if len(entries) > MAX_CONCURRENCY_ENTRIES:
        raise ValueError(
            f"{where} has {len(entries)} entries; at most {MAX_CONCURRENCY_ENTRIES} are allowed"
        )
    parsed = []
    for index, entry in enumerate(entries):
        at = f"{where}[{index}]" if len(entries) > 1 else where
        if not isinstance(entry, dict):
            raise ValueError(
                f"{at} must be a dict with 'limit' and optional 'key' and 'pool', got {entry!r}"
            )
        _known(entry, ("limit", "key", "pool"), at)
        if "limit" not in entry:
            raise ValueError(f"{at} needs a 'limit': how many runs may execute at once")
        pool = entry.get("pool")
        if pool is not None and (
            not isinstance(pool, str)
            or not pool.strip()
            or len(pool) > MAX_POOL_LENGTH
            or ":" in pool
            or validation.invisible_problem(pool)
        ):
            raise ValueError(
                f"{at}: pool must be a name of 1-{MAX_POOL_LENGTH} printable characters "
                f"without ':', got {pool!r}"
            )
        key = entry.get("key")
        owner = f"pool:{pool}" if pool else f"wf:{id}"
        keyed = [p for p in parsed if p.owner == owner and p.key is not None]
        if not pool and key is not None and keyed:
            owner += "#2"
        parsed.append(
            Concurrency(
                limit=_limit(entry["limit"], at),
                key=None if key is None else expressions.compile(key, f"{at} key"),
                pool=pool,
                owner=owner,
            )
        )
    scopes = [(entry.owner, entry.key is None) for entry in parsed]
    if len(set(scopes)) != len(scopes):
        raise ValueError(
            f"{where}: both entries limit the same groups (the same pool, or the whole "
            "workflow, each without a key); merge them into one"
        )
    return tuple(parsed)


def _throttle(id: str, value: Any) -> Throttle | None:
    where = f"workflow {id!r}: throttle"
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(
            f'{where} must be a dict such as {{"limit": 100, "period": "1m", "burst": 10, '
            f'"key": "event.data.accountId"}}, got {value!r}'
        )
    _known(value, ("limit", "period", "burst", "key"), where)
    for required in ("limit", "period"):
        if required not in value:
            raise ValueError(f"{where} needs a {required!r}")
    burst = value.get("burst", 0)
    if isinstance(burst, bool) or not isinstance(burst, int) or not 0 <= burst <= MAX_LIMIT:
        raise ValueError(
            f"{where}: burst must be a whole number from 0 to {MAX_LIMIT}, got {burst!r}"
        )
    key = value.get("key")
    return Throttle(
        limit=_limit(value["limit"], where),
        period=durations.parse(value["period"], f"{where} period"),
        burst=burst,
        key=None if key is None else expressions.compile(key, f"{where} key"),
    )


def _priority(id: str, value: Any) -> expressions.Expression | None:
    where = f"workflow {id!r}: priority"
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"run"}:
        raise ValueError(
            f"{where} must be a dict with one key, 'run': a CEL expression giving seconds "
            f"from {PRIORITY_RANGE[0]} to {PRIORITY_RANGE[1]}, such as "
            f'{{"run": "event.data.plan == \'pro\' ? 120 : 0"}}; got {value!r}'
        )
    return expressions.compile(value["run"], f"{where} run")
