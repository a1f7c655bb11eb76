"""The ``@workflow`` decorator, the registry of workflows and trigger matching."""

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils.module_loading import autodiscover_modules

from eventbus import validation
from workflows import admission, conf, cron, durations, flowcontrol, matching
from workflows.exceptions import UnknownWorkflowError, WorkflowDefinitionError

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-/]{0,199}$")
_TRIGGER_RE = re.compile(rf"^[^\s*{validation.INVISIBLE}]+(/\*)?$")

_registry: dict[str, "Workflow"] = {}
#: What ``on_nondeterminism=`` may be: fail the run, or pause it until ``resume_run``.
ON_NONDETERMINISM = ("fail", "pause")
#: Longest ``version=`` label (the width of ``WorkflowRun.version``).
MAX_VERSION_LENGTH = 100
#: Suffix of the id under which an ``on_failure`` handler runs.
FAILURE_HANDLER_SUFFIX = ":on-failure"


@dataclass(frozen=True)
class CancelRule:
    """One ``cancel_on`` entry: an event that cancels a run of the workflow."""

    event: str
    match: str | None = None
    expression: str | None = None
    timeout: timedelta | None = None


@dataclass(frozen=True)
class Timeouts:
    """``timeouts={"start": …, "finish": …}`` of a workflow."""

    start: timedelta | None = None
    finish: timedelta | None = None


_index: tuple[dict[str, list["Workflow"]], list[tuple[str, "Workflow"]]] | None = None


class Workflow:
    """A registered workflow: a function of ``ctx`` with its id, triggers and options."""

    def __init__(
        self,
        fn: Callable[[Any], Any],
        *,
        id: str,
        triggers: tuple[str, ...],
        retries: int,
        cancel_on: tuple[CancelRule, ...] = (),
        timeouts: Timeouts | None = None,
        on_failure: "Workflow | None" = None,
        version: str = "",
        on_nondeterminism: str = "fail",
        crons: tuple[str, ...] = (),
        flow: flowcontrol.FlowControl = flowcontrol.NONE,
        admit: admission.Admission = admission.NONE,
    ) -> None:
        self.fn = fn
        self.id = id
        self.triggers = triggers
        self.retries = retries
        self.cancel_on = cancel_on
        self.timeouts = timeouts or Timeouts()
        #: The workflow run (as a durable run) after a run of this one failed for good.
        self.on_failure = on_failure
        #: The label stored on each new run (``WorkflowRun.version``).
        self.version = version
        #: ``"fail"`` or ``"pause"``: what a run whose memos no longer fit the code does.
        self.on_nondeterminism = on_nondeterminism
        #: The ``cron=`` entries, each as declared (``TZ=`` prefix included).
        self.crons = crons
        #: ``concurrency``, ``throttle`` and ``priority``: when its runs may execute.
        self.flow = flow
        #: ``rate_limit``, ``debounce``, ``batch_events``, ``singleton``, ``idempotency``:
        #: whether and how an event starts a run.
        self.admission = admit
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", id)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)

    def __call__(self, ctx: Any) -> Any:
        """Call the workflow function directly (as a plain function, without steps memo)."""
        return self.fn(ctx)

    def __repr__(self) -> str:
        return f"<Workflow {self.id!r} triggers={list(self.triggers)!r}>"


def _under(prefix: str, name: str) -> bool:
    """Whether ``name`` is strictly under ``prefix`` (which ends with "/")."""
    return name.startswith(prefix) and len(name) > len(prefix)


def workflow(
    *,
    id: str,
    trigger: str | list[str] | tuple[str, ...] | None = None,
    retries: int | None = None,
    cancel_on: list[dict[str, Any]] | None = None,
    timeouts: dict[str, Any] | None = None,
    on_failure: Callable[[Any], Any] | None = None,
    version: str | None = None,
    on_nondeterminism: str = "fail",
    cron: str | list[str] | tuple[str, ...] | None = None,
    concurrency: int | dict[str, Any] | list[dict[str, Any]] | None = None,
    throttle: dict[str, Any] | None = None,
    priority: dict[str, str] | None = None,
    rate_limit: dict[str, Any] | None = None,
    debounce: dict[str, Any] | None = None,
    batch_events: dict[str, Any] | None = None,
    singleton: dict[str, Any] | None = None,
    idempotency: str | None = None,
) -> Callable[[Callable[[Any], Any]], Workflow]:
    """Register a durable workflow.

    ``id`` is stable and unique in the process. ``trigger`` is an event name, a list of
    them, or ``None`` (started only by ``step.invoke``); ``"agent/*"`` matches every name
    under ``agent/``. ``retries`` is how often a failing step is retried after its first
    try (default ``WORKFLOWS["DEFAULT_RETRIES"]``).

    ``cancel_on`` is a list of ``{"event": name, "match": "data.x", "if": cel,
    "timeout": duration}``: an event of that name (emitted in the run's workspace after
    the run was created, matching like ``step.wait_for_event``) cancels the run.
    ``timeouts={"start": d, "finish": d}`` cancels a run that waited longer than ``start``
    for its first step, or ran longer than ``finish`` from its start. ``on_failure`` is
    a function of ``ctx`` run as its own durable run after a run failed for good; its
    ``ctx.event`` is the ``workflows/run.failed`` event (``data``: ``run_id``,
    ``workflow_id``, ``error``, ``event``).

    ``version`` is a free-form label (up to 100 characters) stored on each new run, to
    tell runs of one deploy from another's. ``on_nondeterminism="pause"`` pauses a run
    whose recorded steps no longer fit the code (status ``paused``, resumed with
    ``resume_run`` once the code fits again) instead of failing it (``"fail"``, the
    default). See docs/versioning.md.

    ``cron`` is a cron entry or a list of them (five fields, or six with seconds first;
    an optional ``TZ=<zone> `` prefix, default UTC): each slot starts one run in the
    default workspace, with a ``workflows/cron`` event (see docs/schedules.md).

    Flow control (see docs/flow-control.md): ``concurrency``, ``throttle`` and
    ``priority`` shape when runs execute; ``rate_limit``, ``debounce``,
    ``batch_events``, ``singleton`` and ``idempotency`` decide whether and how an event
    starts a run. Their keys are CEL expressions over ``event`` and ``workspace``.
    """
    if not isinstance(id, str) or not _ID_RE.match(id):
        raise WorkflowDefinitionError(
            f"workflow id {id!r} is invalid: use 1-200 characters of letters, digits and "
            "'_.:-/', starting with a letter or digit"
        )
    triggers = _triggers(id, trigger)
    label = _version(id, version)
    if on_nondeterminism not in ON_NONDETERMINISM:
        raise WorkflowDefinitionError(
            f"workflow {id!r}: on_nondeterminism must be 'fail' or 'pause', got "
            f"{on_nondeterminism!r}"
        )
    crons = _crons(id, cron)
    flow = flowcontrol.parse(id, concurrency=concurrency, throttle=throttle, priority=priority)
    admit = admission.parse(
        id,
        rate_limit=rate_limit,
        debounce=debounce,
        batch_events=batch_events,
        singleton=singleton,
        idempotency=idempotency,
    )
    if retries is None:
        retries = conf.get().DEFAULT_RETRIES
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
        raise WorkflowDefinitionError(
            f"workflow {id!r}: retries must be a whole number from 0 to 100, got {retries!r}"
        )

    rules = _cancel_rules(id, cancel_on)
    limits = _timeouts(id, timeouts)
    if on_failure is not None and (not callable(on_failure) or isinstance(on_failure, Workflow)):
        raise WorkflowDefinitionError(
            f"workflow {id!r}: on_failure must be a plain function of ctx (not a "
            f"@workflow), got {on_failure!r}"
        )
    if on_failure is not None and len(id) + len(FAILURE_HANDLER_SUFFIX) > 200:
        raise WorkflowDefinitionError(
            f"workflow {id!r}: with on_failure, the id must be at most "
            f"{200 - len(FAILURE_HANDLER_SUFFIX)} characters"
        )

    def decorate(fn: Callable[[Any], Any]) -> Workflow:
        if not callable(fn):
            raise WorkflowDefinitionError(f"workflow {id!r}: @workflow must decorate a function")
        handler = None
        if on_failure is not None:
            handler = Workflow(
                on_failure,
                id=id + FAILURE_HANDLER_SUFFIX,
                triggers=(),
                retries=retries,
                version=label,
                on_nondeterminism=on_nondeterminism,
            )
        wf = Workflow(
            fn,
            id=id,
            triggers=triggers,
            retries=retries,
            crons=crons,
            cancel_on=rules,
            timeouts=limits,
            on_failure=handler,
            version=label,
            on_nondeterminism=on_nondeterminism,
            flow=flow,
            admit=admit,
        )
        register(wf)
        if handler is not None:
            register(handler)
        return wf

    return decorate


def _triggers(id: str, trigger: Any) -> tuple[str, ...]:
    if trigger is None:
        return ()
    items = [trigger] if isinstance(trigger, str) else trigger
    if not isinstance(items, list | tuple) or not items:
        raise WorkflowDefinitionError(
            f"workflow {id!r}: trigger must be an event name, a non-empty list of them, "
            f"or None; got {trigger!r}"
        )
    for item in items:
        if not isinstance(item, str) or not _TRIGGER_RE.match(item) or len(item) > 255:
            raise WorkflowDefinitionError(
                f"workflow {id!r}: trigger {item!r} is not an event name or a 'prefix/*' "
                "pattern (printable, no spaces, '*' only as a final '/*')"
            )
    return tuple(dict.fromkeys(items))


def _crons(id: str, entries: Any) -> tuple[str, ...]:
    if entries is None:
        return ()
    items = [entries] if isinstance(entries, str) else entries
    if not isinstance(items, list | tuple) or not items:
        raise WorkflowDefinitionError(
            f"workflow {id!r}: cron must be a cron entry such as '0 2 * * *', a non-empty "
            f"list of them, or None; got {entries!r}"
        )
    for index, item in enumerate(items):
        try:
            cron.parse(item)
        except cron.CronError as exc:
            raise WorkflowDefinitionError(f"workflow {id!r}: cron[{index}]: {exc}") from None
    return tuple(dict.fromkeys(items))


def _version(id: str, version: Any) -> str:
    if version is None:
        return ""
    if not isinstance(version, str) or len(version) > MAX_VERSION_LENGTH or "\x00" in version:
        raise WorkflowDefinitionError(
            f"workflow {id!r}: version must be a label of at most {MAX_VERSION_LENGTH} "
            f"characters (e.g. '2025-06-01' or 'v3'), got {version!r}"[:300]
        )
    return version


_RULE_KEYS = {"event", "match", "if", "if_", "timeout"}


def _cancel_rules(id: str, cancel_on: Any) -> tuple[CancelRule, ...]:
    if cancel_on is None:
        return ()
    if isinstance(cancel_on, dict):
        cancel_on = [cancel_on]
    if not isinstance(cancel_on, list | tuple):
        raise WorkflowDefinitionError(
            f"workflow {id!r}: cancel_on must be a list of dicts such as "
            f'[{{"event": "order/refunded", "match": "data.orderId"}}], got {cancel_on!r}'
        )
    rules = []
    for index, entry in enumerate(cancel_on):
        where = f"workflow {id!r}: cancel_on[{index}]"
        if not isinstance(entry, dict):
            raise WorkflowDefinitionError(f"{where} must be a dict, got {entry!r}")
        unknown = set(entry) - _RULE_KEYS
        if unknown:
            raise WorkflowDefinitionError(
                f"{where} has unknown keys {sorted(unknown)}; allowed: event, match, if, timeout"
            )
        name = entry.get("event")
        if not isinstance(name, str) or not name or not _TRIGGER_RE.match(name) or "*" in name:
            raise WorkflowDefinitionError(
                f"{where} needs an 'event': the name of the event that cancels the run "
                f"(printable, no spaces, no wildcard), got {name!r}"
            )
        expression = entry.get("if", entry.get("if_"))
        try:
            match = entry.get("match")
            if match is not None:
                matching.check_path(match, where)
            if expression is not None:
                matching.check_expression(expression, where)
            timeout = entry.get("timeout")
            if timeout is not None:
                timeout = durations.parse(timeout, f"{where} timeout")
        except ValueError as exc:
            raise WorkflowDefinitionError(str(exc)) from None
        rules.append(CancelRule(event=name, match=match, expression=expression, timeout=timeout))
    return tuple(rules)


def _timeouts(id: str, timeouts: Any) -> Timeouts:
    if timeouts is None:
        return Timeouts()
    if not isinstance(timeouts, dict) or not set(timeouts) <= {"start", "finish"}:
        raise WorkflowDefinitionError(
            f"workflow {id!r}: timeouts must be a dict with the keys 'start' and/or "
            f"'finish', got {timeouts!r}"
        )
    parsed: dict[str, timedelta | None] = {}
    for key in ("start", "finish"):
        value = timeouts.get(key)
        try:
            parsed[key] = (
                None
                if value is None
                else durations.parse(value, f"workflow {id!r}: timeouts[{key!r}]")
            )
        except ValueError as exc:
            raise WorkflowDefinitionError(str(exc)) from None
    return Timeouts(**parsed)


def register(wf: Workflow) -> None:
    """Add ``wf`` to the registry; an id already taken by another function is an error."""
    global _index
    existing = _registry.get(wf.id)
    if existing is not None and _origin(existing) != _origin(wf):
        raise WorkflowDefinitionError(
            f"workflow id {wf.id!r} is defined twice: by {_origin(existing)} and by "
            f"{_origin(wf)}; workflow ids must be unique"
        )
    _registry[wf.id] = wf
    _index = None
    _changed()


def unregister(workflow_id: str) -> None:
    """Remove a workflow from the registry (for tests)."""
    global _index
    _registry.pop(workflow_id, None)
    _index = None
    _changed()


#: Bumped by every change to the registry: the dispatcher reconciles the ``cron=``
#: schedules with the database again when it differs from the one it last saw.
generation = 0


def _changed() -> None:
    global generation
    generation += 1


def cron_workflows() -> list[Workflow]:
    """Every registered workflow with a ``cron=``, by id."""
    return [wf for wf in all_workflows() if wf.crons]


def _origin(wf: Workflow) -> str:
    return f"{wf.fn.__module__}.{getattr(wf.fn, '__qualname__', wf.fn)}"


def get(workflow_id: Any) -> Workflow:
    """Return the workflow registered under ``workflow_id`` (or given as a function)."""
    if isinstance(workflow_id, Workflow):
        return workflow_id
    if not isinstance(workflow_id, str):
        raise UnknownWorkflowError(
            f"expected a workflow id (str) or a @workflow function, got "
            f"{type(workflow_id).__name__}"
        )
    try:
        return _registry[workflow_id]
    except KeyError:
        known = ", ".join(sorted(_registry)) or "none"
        raise UnknownWorkflowError(
            f"unknown workflow id {workflow_id!r}; registered: {known}"
        ) from None


def all_workflows() -> list[Workflow]:
    """Every registered workflow, by id."""
    return [_registry[key] for key in sorted(_registry)]


def subscribers(name: str) -> list[Workflow]:
    """The workflows an event called ``name`` triggers."""
    global _index
    if _index is None:
        exact: dict[str, list[Workflow]] = {}
        prefixes: list[tuple[str, Workflow]] = []
        for wf in _registry.values():
            for pattern in wf.triggers:
                if pattern.endswith("/*"):
                    prefixes.append((pattern[:-1], wf))
                else:
                    exact.setdefault(pattern, []).append(wf)
        _index = (exact, prefixes)
    exact, prefixes = _index
    found = list(exact.get(name, ()))
    for prefix, wf in prefixes:
        if _under(prefix, name) and wf not in found:
            found.append(wf)
    return found


def autodiscover() -> None:
    """Import ``workflows.py`` of every installed app and each of ``WORKFLOWS_MODULES``."""
    autodiscover_modules("workflows")
    for module in getattr(settings, "WORKFLOWS_MODULES", ()):
        importlib.import_module(module)
