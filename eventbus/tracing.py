"""OpenTelemetry, when it is installed (the ``otel`` extra): the tracer and trace contexts.

Without ``opentelemetry-api`` nothing of it is imported and every helper here is a
constant-time no-op: :data:`ENABLED` is false, :func:`carrier` returns what an incoming
request brought (or ``None``), the span helpers return a shared null context.

The trace context current when an event is stored is kept on the event as a W3C
carrier (``{"traceparent": …, "tracestate": …}``), so whatever the event starts later,
in another process or days after, can continue that trace (:func:`extract`).
"""

import contextlib
import functools
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

try:  # The optional extra: absent, the engine pays nothing for tracing.
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - exercised in a subprocess test
    otel_context = propagate = trace = None  # type: ignore[assignment]

#: Whether ``opentelemetry-api`` is importable here.
ENABLED = trace is not None
#: The tracer's name, and the prefix of span and attribute names: the app that builds
#: on the event bus names it (:func:`use_namespace`).
_namespace = "eventbus"
#: A W3C ``traceparent`` header: version, trace id, parent id, flags.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
#: The carrier an incoming request brought, for a process without OpenTelemetry.
_incoming: ContextVar[dict[str, str] | None] = ContextVar("eventbus_incoming_trace", default=None)
_NULL = contextlib.nullcontext()


def use_namespace(name: str) -> None:
    """Name the tracer, and prefix the span and attribute names, with ``name``."""
    global _namespace
    _namespace = name
    if ENABLED:
        tracer.cache_clear()


@functools.cache
def tracer() -> Any:
    """The tracer of the global provider, named after the namespace (a proxy until the
    project sets a provider, which it then follows: configuring after start-up works)."""
    return trace.get_tracer(_namespace)


def recording() -> bool:
    """Whether spans started here are recorded: OpenTelemetry is installed and the project
    has set a tracer provider (the API alone, or its no-op provider, records nothing).

    Checked at each call, so a provider set after start-up is followed. Only spans that
    carry no context of their own may be skipped on it: a span started without a
    provider still carries its parent's context, which an event stored under it keeps.
    """
    if not ENABLED:
        return False
    return not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )


def carrier() -> dict[str, str] | None:
    """The current trace context as a W3C carrier to store with an event, or ``None``."""
    if not ENABLED:
        return _incoming.get()
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers or None


def extract(stored: Mapping[str, str] | None) -> Any:
    """The OpenTelemetry context of a stored carrier (``None`` without one or without OTel)."""
    if not ENABLED or not stored:
        return None
    return propagate.extract(dict(stored))


def _valid(headers: Mapping[str, str]) -> dict[str, str] | None:
    parent = (headers.get("traceparent") or "").strip().lower()
    if not _TRACEPARENT.match(parent) or parent.startswith("ff"):
        return None
    found = {"traceparent": parent}
    state = headers.get("tracestate")
    if state and len(state) <= 512:
        found["tracestate"] = state
    return found


@contextlib.contextmanager
def incoming(headers: Mapping[str, str]) -> Iterator[None]:
    """Within: the trace context of an incoming request's ``traceparent`` header is the
    parent of the spans started, and what events stored meanwhile carry."""
    found = _valid(headers)
    if found is None:
        yield
        return
    if not ENABLED:
        reset = _incoming.set(found)
        try:
            yield
        finally:
            _incoming.reset(reset)
        return
    token = otel_context.attach(propagate.extract(found))
    try:
        yield
    finally:
        otel_context.detach(token)


def send_span(names: list[str], workspace: str) -> Any:
    """The ``<namespace>.send`` span around storing events (a null context without OTel)."""
    if not ENABLED:
        return _NULL
    return tracer().start_as_current_span(
        f"{_namespace}.send",
        kind=trace.SpanKind.PRODUCER,
        attributes={
            f"{_namespace}.event_name": names[0] if len(names) == 1 else "",
            f"{_namespace}.event_count": len(names),
            f"{_namespace}.workspace": workspace,
        },
    )
