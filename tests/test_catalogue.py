"""A catalogue of bad input, fed through every entry point by one table-driven test.

Each case names an entry point (``send``, ``send_batch``, the step API, ``@workflow``, a
management command, an admin page or action, ``schedules.create``, the HTTP event API
and webhooks, the console services), gives it one kind of bad input, and
checks two things: the error message names what was wrong, and the database holds
nothing half-written afterwards (the rows of events, runs, step memos, waits and event
keys are counted, the schedule rows and the registered workflows listed, before and
after; a step that failed may leave only its complete ``failed`` memo).

To add a case, append a :class:`Case` to the table of its entry point; cases for
``wait_for_event``, ``invoke`` and ``cancel_on`` go in ``COORDINATION_CASES`` below,
``schedules.create`` in ``SCHEDULE_CASES``, ``POST /e/<key>`` and ``POST /w/<id>`` in
``HTTP_CASES`` (what the client was shown: status and JSON reply), and the Python API
(``RetryAfterError``, ``registry.get``, the console services) in ``API_CASES``.
"""

import hashlib
import hmac
import json
import math
import re
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

import eventbus
import workflows
from eventbus import bus, validation
from eventbus.models import Event, EventKey, EventStatus, Webhook, WebhookScheme, Workspace
from workflows import pausing, registry, retention, schedules, services, testing, workflow
from workflows.exceptions import (
    ConsoleError,
    DuplicateScheduleError,
    MalformedIdError,
    NotReplayableError,
    RetryAfterError,
    ScheduleError,
    UnknownEventError,
    UnknownRunError,
    UnknownStepError,
    UnknownWorkflowError,
    WorkflowDefinitionError,
    WrongWorkspaceError,
)
from workflows.models import RunStatus, Schedule, StepResult, StepStatus, Wait, WorkflowRun

pytestmark = pytest.mark.django_db

LIMIT = 512 * 1024  # EVENTBUS["MAX_PAYLOAD_BYTES"], the documented default
YEAR_3000_MS = int(datetime(3000, 1, 1).timestamp() * 1000)
YEAR_10000_MS = validation.MAX_TS_MS + 1
RESERVED = (
    "is reserved: names beginning with 'workflows/' are emitted only by the app that owns them"
)


def nested(depth: int) -> dict:
    """``{"a": {"a": … {}}}`` ``depth`` levels deep, built without recursion."""
    root: dict = {}
    cursor = root
    for _ in range(depth):
        cursor["a"] = {}
        cursor = cursor["a"]
    return root


@dataclass
class Case:
    """One kind of bad input at one entry point.

    ``act(env)`` feeds the input: for ``raises`` cases it must raise ``error``; for
    ``step`` cases it is the body of a workflow run, which must fail; for ``admin`` and
    ``http`` cases it returns what the user (or the HTTP client) was shown. ``message``
    is a regex the error (or what was shown) must contain. ``setup(env)`` prepares rows
    before the counting.
    """

    id: str
    entry: str
    act: Callable[..., Any]
    message: str
    error: type[BaseException] = ValueError
    setup: Callable[..., Any] | None = None
    #: For step cases: the step's function ran and its failure is stored as a complete
    #: ``failed`` memo (the one row the case may add).
    failed_memo: bool = False
    #: For step cases: the type name the run's stored error must have.
    stored_type: str | None = None


# --- send / send_batch -----------------------------------------------------------------
def send(*args: Any, **kwargs: Any) -> Callable[[Any], Any]:
    return lambda env: eventbus.send(*args, **kwargs)


def batch(events: Any, **kwargs: Any) -> Callable[[Any], Any]:
    return lambda env: eventbus.send_batch(events, **kwargs)


SEND_CASES = [
    Case("send-name-empty", "send", send(""), "event name must not be empty"),
    Case("send-name-none", "send", send(None), "event name must be a string, got NoneType"),
    Case("send-name-bytes", "send", send(b"cat/x"), "event name must be a string, got bytes"),
    Case("send-name-space", "send", send("has space"), "'has space' is malformed"),
    Case("send-name-newline", "send", send("cat/a\nb"), r"'cat/a\\nb' is malformed"),
    Case("send-name-escape-char", "send", send("cat/\x1b[31m"), r"'cat/\\x1b\[31m' is malformed"),
    Case("send-name-nul", "send", send("cat/\x00"), r"'cat/\\x00' is malformed"),
    Case("send-name-del-char", "send", send("cat/\x7f"), r"'cat/\\x7f' is malformed"),
    Case("send-name-star", "send", send("cat/*"), r"'cat/\*' is malformed"),
    Case("send-name-very-long", "send", send("n" * 10_000), "10000 characters long; the limit"),
    Case("send-data-list", "send", send("cat/x", [1, 2]), "must be a JSON object.*got list"),
    Case("send-data-string", "send", send("cat/x", "{}"), "must be a JSON object.*got str"),
    Case(
        "send-oversized-payload",
        "send",
        send("cat/x", {"big": "x" * LIMIT}),
        rf"data is {LIMIT + 10} bytes encoded; the limit is {LIMIT} bytes",
    ),
    Case(
        "send-oversized-multibyte",
        "send",
        send("cat/x", {"big": "é" * (LIMIT // 2 + 1)}),
        rf"the limit is {LIMIT} bytes",
    ),
    Case("send-deep-nesting", "send", send("cat/x", nested(65)), "nested deeper than 64 levels"),
    Case(
        "send-very-deep-nesting",
        "send",
        send("cat/x", nested(200_000)),
        "nested deeper than 64 levels",
    ),
    Case(
        "send-nan",
        "send",
        send("cat/x", {"x": math.nan}),
        r"data\.x: nan is not allowed in JSON \(only finite numbers\)",
    ),
    Case(
        "send-infinity-in-list",
        "send",
        send("cat/x", {"xs": [1, -math.inf]}),
        r"data\.xs\[1\]: -inf is not allowed",
    ),
    Case(
        "send-int-key",
        "send",
        send("cat/x", {1: "a"}),
        "key 1 is a int; JSON object keys must be strings",
    ),
    Case("send-none-key", "send", send("cat/x", {None: 1}), "key None is a NoneType"),
    Case(
        "send-tuple-key-nested",
        "send",
        send("cat/x", {"a": {("b", 1): 2}}),
        r"data\.a: key \('b', 1\) is a tuple",
    ),
    Case("send-nul-in-string", "send", send("cat/x", {"s": "a\x00b"}), r"data\.s: .*NUL"),
    Case("send-lone-surrogate", "send", send("cat/x", {"s": "\udc80"}), "lone surrogate"),
    Case(
        "send-datetime-value",
        "send",
        send("cat/x", {"when": datetime(2025, 1, 1)}),
        r"data\.when: a datetime is not JSON-serialisable",
    ),
    Case("send-bytes-value", "send", send("cat/x", {"b": b"\x00"}), "a bytes is not JSON"),
    Case("send-set-value", "send", send("cat/x", {"s": {1, 2}}), "a set is not JSON"),
    Case("send-ts-string", "send", send("cat/x", ts="tomorrow"), "ts must be a number.*got str"),
    Case("send-ts-bool", "send", send("cat/x", ts=True), "ts must be a number.*got bool"),
    Case("send-ts-negative", "send", send("cat/x", ts=-1), "ts -1 is out of range"),
    Case(
        "send-ts-far-past",
        "send",
        send("cat/x", ts=-62_135_596_800_000),
        "out of range: give Unix milliseconds between 0",
    ),
    Case("send-ts-year-10000", "send", send("cat/x", ts=YEAR_10000_MS), "out of range"),
    Case("send-ts-infinity", "send", send("cat/x", ts=math.inf), "ts inf is out of range"),
    Case("send-ts-nan", "send", send("cat/x", ts=math.nan), "ts nan is out of range"),
    Case("send-id-empty", "send", send("cat/x", id=""), "id .* must be a non-empty string"),
    Case("send-id-int", "send", send("cat/x", id=7), "id .* must be a non-empty string"),
    Case("send-id-very-long", "send", send("cat/x", id="k" * 256), "id is 256 characters"),
    Case("send-id-control-char", "send", send("cat/x", id="k\x01"), "id must not contain control"),
    Case(
        "send-unknown-workspace",
        "send",
        send("cat/x", workspace="nope"),
        "unknown workspace 'nope'",
    ),
    Case("send-workspace-int", "send", send("cat/x", workspace=3), "workspace must be a slug"),
    Case("send-workspace-nul", "send", send("cat/x", workspace="a\x00b"), "contains U\\+0000"),
    Case("send-workspace-zero-width", "send", send("cat/x", workspace="de\u200bfault"), "U\\+200B"),
    Case("send-name-tab", "send", send("tab\tname"), r"'tab\\tname' is malformed"),
    Case("send-name-256", "send", send("x" * 256), "256 characters long; the limit is 255"),
    Case(
        "send-name-reserved",
        "send",
        send("workflows/run.failed", {}),
        f"event name 'workflows/run.failed' {RESERVED}",
    ),
    *[
        Case(f"send-name-look-alike-{ord(char[0]):x}", "send", send(f"shop/{char}x"), message)
        for char, message in (
            ("\u200b", "U\\+200B"),
            ("\x9b", "U\\+009B"),
            ("\u2066", "U\\+2066"),
            ("\ud800", "U\\+D800"),
        )
    ],
    Case(
        "send-object-value",
        "send",
        send("cat/x", {"when": object()}),
        r"data\.when: a object is not JSON-serialisable \(allowed: dict with str keys",
    ),
    Case(
        "send-infinity",
        "send",
        send("cat/x", {"x": math.inf}),
        r"data\.x: inf is not allowed in JSON \(only finite numbers\)",
    ),
    Case("send-high-surrogate", "send", send("cat/x", {"s": "\ud800"}), "lone surrogate"),
    Case("send-ts-huge-int", "send", send("cat/x", ts=10**20), "ts 100000000000000000000 is out"),
    Case("send-id-bom", "send", send("cat/x", id="\ufeffkey"), "id .*U\\+FEFF"),
    Case("batch-empty", "send_batch", batch([]), "events must not be empty"),
    Case("batch-dict", "send_batch", batch({"name": "cat/x"}), "events must be a list"),
    Case("batch-string", "send_batch", batch("cat/x"), "events must be a list"),
    Case("batch-none", "send_batch", batch(None), "events must be a list"),
    Case("batch-item-not-dict", "send_batch", batch(["cat/x"]), r"events\[0\] must be a dict"),
    Case("batch-item-no-name", "send_batch", batch([{"data": {}}]), r"events\[0\] has no 'name'"),
    Case(
        "batch-item-unknown-key",
        "send_batch",
        batch([{"name": "cat/x", "payload": {}}]),
        r"events\[0\] has unknown keys \['payload'\]",
    ),
    Case(
        "batch-one-bad-item-stores-none",
        "send_batch",
        batch([{"name": "cat/x"}, {"name": "cat/y"}, {"name": "cat/z", "data": {"x": math.nan}}]),
        r"events\[2\]: event 'cat/z': data\.x: nan",
    ),
    Case(
        "batch-oversized-item",
        "send_batch",
        batch([{"name": "cat/x"}, {"name": "cat/y", "data": {"big": "x" * LIMIT}}]),
        rf"events\[1\]: .*the limit is {LIMIT} bytes",
    ),
    Case(
        "batch-100000-events",
        "send_batch",
        lambda env: env.bounded_memory(lambda: eventbus.send_batch([{"name": "cat/x"}] * 100_000)),
        r"a batch holds at most 10000 events \(EVENTBUS\['MAX_BATCH_SIZE'\]\); got 100000",
    ),
    Case(
        "batch-item-bad-name",
        "send_batch",
        batch([{"name": "cat/ok"}, {"name": "bad name"}]),
        r"events\[1\]: event name 'bad name' is malformed",
    ),
    Case(
        "batch-reserved-name",
        "send_batch",
        batch([{"name": "cat/ok"}, {"name": "workflows/invoke"}]),
        r"events\[1\]: event name 'workflows/invoke' is reserved: names beginning with "
        "'workflows/'",
    ),
    Case(
        "batch-10001-events",
        "send_batch",
        batch([{"name": "cat/x"}] * 10_001),
        r"a batch holds at most 10000 events \(EVENTBUS\['MAX_BATCH_SIZE'\]\); got 10001",
    ),
    Case(
        "batch-unknown-workspace",
        "send_batch",
        batch([{"name": "cat/x"}], workspace="nope"),
        "unknown workspace 'nope'",
    ),
]
for _case in SEND_CASES:
    _case.error = eventbus.EventError


# --- the step API (inside a run; the run fails with the message) -------------------------
STEP_CASES = [
    Case("step-id-empty", "step", lambda ctx: ctx.step.run("", int), "step id must be a non-empty"),
    Case("step-id-blank", "step", lambda ctx: ctx.step.run("   ", int), "must be a non-empty"),
    Case("step-id-int", "step", lambda ctx: ctx.step.run(42, int), "step id must be a string"),
    Case(
        "step-id-very-long",
        "step",
        lambda ctx: ctx.step.run("s" * 256, int),
        "step id is 256 characters long; the limit is 255",
    ),
    Case("step-id-nul", "step", lambda ctx: ctx.step.run("a\x00b", int), "must not contain NUL"),
    Case("step-id-bidi", "step", lambda ctx: ctx.step.run("a\u202eb", int), "contains U\\+202E"),
    Case("step-id-surrogate", "step", lambda ctx: ctx.step.run("a\ud800", int), "U\\+D800"),
    Case("step-id-c1", "step", lambda ctx: ctx.step.run("a\x85b", int), "contains U\\+0085"),
    Case(
        "step-sleep-until-year-0-utc",
        "step",
        lambda ctx: ctx.step.sleep_until(
            "z", datetime(1, 1, 1, 1, tzinfo=dt_timezone(timedelta(hours=14)))
        ),
        "is not within the years 1 to 9999 in UTC",
    ),
    Case(
        "step-retry-after-nan",
        "step",
        lambda ctx: ctx.step.run("r", lambda: RetryAfterError("later", math.nan)),
        "retry_after must be from 0 seconds to 100 years",
        failed_memo=True,
    ),
    Case(
        "step-run-not-callable",
        "step",
        lambda ctx: ctx.step.run("s", 42),
        r"step.run\('s'\): the second argument must be a callable, got int",
    ),
    Case(
        "step-run-returns-set",
        "step",
        lambda ctx: ctx.step.run("s", lambda: {1, 2}),
        "returned a value that is not JSON-serialisable.*a set",
        failed_memo=True,
    ),
    Case(
        "step-run-returns-nan",
        "step",
        lambda ctx: ctx.step.run("s", lambda: {"x": math.nan}),
        "nan is not allowed in JSON",
        failed_memo=True,
    ),
    Case(
        "step-run-returns-int-keys",
        "step",
        lambda ctx: ctx.step.run("s", lambda: {1: "a"}),
        "JSON object keys must be strings",
        failed_memo=True,
    ),
    Case(
        "step-nested",
        "step",
        lambda ctx: ctx.step.run("outer", lambda: ctx.step.run("inner", int)),
        "steps cannot be nested",
        failed_memo=True,
    ),
    Case(
        "step-sleep-negative",
        "step",
        lambda ctx: ctx.step.sleep("z", -1),
        "duration must be zero or more, got -1",
    ),
    Case(
        "step-sleep-nan",
        "step",
        lambda ctx: ctx.step.sleep("z", math.nan),
        "duration must be zero or more",
    ),
    Case(
        "step-sleep-list",
        "step",
        lambda ctx: ctx.step.sleep("z", [5]),
        'expected a timedelta, a number of seconds, or text such as "30s"',
    ),
    Case(
        "step-sleep-bad-text",
        "step",
        lambda ctx: ctx.step.sleep("z", "5 minutes"),
        "not a duration",
    ),
    Case(
        "step-sleep-too-long",
        "step",
        lambda ctx: ctx.step.sleep("z", 1e18),
        "longer than the limit of 100 years",
    ),
    Case(
        "step-sleep-until-naive",
        "step",
        lambda ctx: ctx.step.sleep_until("z", datetime(2030, 1, 1)),
        "the datetime must be aware",
    ),
    Case(
        "step-sleep-until-year-10000",
        "step",
        lambda ctx: ctx.step.sleep_until("z", YEAR_10000_MS),
        "is not Unix milliseconds between 0 and",
    ),
    Case(
        "step-sleep-until-string",
        "step",
        lambda ctx: ctx.step.sleep_until("z", "2030-01-01"),
        "when must be an aware datetime or Unix milliseconds, got str",
    ),
    Case(
        "step-send-bad-name",
        "step",
        lambda ctx: ctx.step.send_event("e", name="has space", data={}),
        r"step.send_event\('e'\): event name 'has space' is malformed",
    ),
    Case(
        "step-send-no-name",
        "step",
        lambda ctx: ctx.step.send_event("e", data={}),
        "name is required",
    ),
    Case(
        "step-send-name-and-events",
        "step",
        lambda ctx: ctx.step.send_event("e", name="cat/x", events=[{"name": "cat/y"}]),
        "give either name/data/ts/id or events=",
    ),
    Case(
        "step-send-nan",
        "step",
        lambda ctx: ctx.step.send_event("e", name="cat/x", data={"x": math.inf}),
        "inf is not allowed",
    ),
    Case(
        "step-send-oversized",
        "step",
        lambda ctx: ctx.step.send_event("e", name="cat/x", data={"big": "x" * LIMIT}),
        rf"the limit is {LIMIT} bytes",
    ),
    Case(
        "step-send-ts-year-10000",
        "step",
        lambda ctx: ctx.step.send_event("e", name="cat/x", ts=YEAR_10000_MS),
        "out of range",
    ),
    Case(
        "step-send-batch-too-big",
        "step",
        lambda ctx: ctx.step.send_event("e", events=[{"name": "cat/x"}] * 10_001),
        "a batch holds at most 10000 events",
    ),
    Case(
        "step-send-batch-one-bad",
        "step",
        lambda ctx: ctx.step.send_event("e", events=[{"name": "cat/x"}, {"name": ""}]),
        r"events\[1\]: event name must not be empty",
    ),
    Case(
        "step-send-into-other-workspace",
        "step",
        lambda ctx: ctx.step.run("send", lambda: eventbus.send("cat/x", {}, workspace="other")),
        "cannot send into workspace 'other'",
        failed_memo=True,
    ),
    Case(
        "step-send-reserved-name",
        "step",
        lambda ctx: ctx.step.send_event("e", name="workflows/run.failed", data={"run_id": "x"}),
        r"step.send_event\('e'\): event name 'workflows/run.failed' is reserved: names "
        "beginning with 'workflows/'",
    ),
    Case(
        "workflow-returns-object",
        "step",
        lambda ctx: object(),
        "the return value of workflow 'cat-step'.*not JSON-serialisable",
    ),
]

STEP_BODIES = {case.id: case.act for case in STEP_CASES}


@workflow(id="cat-step", trigger="cat/step", retries=0)
def cat_step(ctx):
    """Feeds the step API the bad input of the case named in the event."""
    return STEP_BODIES[ctx.event.data["case"]](ctx)


# --- @workflow ---------------------------------------------------------------------------
def define(**options: Any) -> Callable[[Any], Any]:
    return lambda env: workflow(**options)(lambda ctx: None)


def options_refused(family: str, cases: tuple) -> list[Case]:
    """``@workflow`` cases of one family of options, each ``(name, options, message)``."""
    return [
        Case(
            f"wf-{family}-{name}",
            "@workflow",
            define(id="cat-bad", trigger="cat/bad", **options),
            message,
        )
        for name, options, message in cases
    ]


WORKFLOW_CASES = [
    Case("wf-id-empty", "@workflow", define(id=""), "workflow id '' is invalid"),
    Case("wf-id-space", "@workflow", define(id="a b"), "workflow id 'a b' is invalid"),
    Case("wf-id-very-long", "@workflow", define(id="w" * 201), "use 1-200 characters"),
    Case("wf-id-int", "@workflow", define(id=7), "workflow id 7 is invalid"),
    Case("wf-id-leading-dash", "@workflow", define(id="-x"), "starting with a letter or digit"),
    Case("wf-id-control-char", "@workflow", define(id="x\ny"), "is invalid"),
    Case(
        "wf-trigger-space",
        "@workflow",
        define(id="cat-bad", trigger="a b"),
        "trigger 'a b' is not an event name",
    ),
    Case("wf-trigger-star-inside", "@workflow", define(id="cat-bad", trigger="a*b"), "'/\\*'"),
    Case(
        "wf-trigger-bidi",
        "@workflow",
        define(id="cat-bad", trigger="cat/\u202eevil"),
        "is not an event name",
    ),
    Case(
        "wf-trigger-surrogate",
        "@workflow",
        define(id="cat-bad", trigger="cat/\ud800"),
        "is not an event name",
    ),
    Case(
        "wf-cancel-on-zero-width",
        "@workflow",
        define(id="cat-bad", trigger="cat/x", cancel_on=[{"event": "cat/\u200by"}]),
        "needs an 'event'",
    ),
    Case("wf-trigger-empty-list", "@workflow", define(id="cat-bad", trigger=[]), "non-empty list"),
    Case("wf-trigger-dict", "@workflow", define(id="cat-bad", trigger={"a": 1}), "trigger must"),
    Case(
        "wf-trigger-int-in-list",
        "@workflow",
        define(id="cat-bad", trigger=["ok", 5]),
        "trigger 5 is not an event name",
    ),
    Case("wf-trigger-very-long", "@workflow", define(id="cat-bad", trigger="t" * 256), "trigger"),
    Case(
        "wf-retries-negative",
        "@workflow",
        define(id="cat-bad", retries=-1),
        "retries must be a whole number from 0 to 100, got -1",
    ),
    Case("wf-retries-huge", "@workflow", define(id="cat-bad", retries=101), "0 to 100, got 101"),
    Case(
        "wf-retries-string",
        "@workflow",
        define(id="cat-bad", retries="3"),
        "retries must be a whole number from 0 to 100, got '3'",
    ),
    Case("wf-retries-bool", "@workflow", define(id="cat-bad", retries=True), "got True"),
    Case(
        "wf-batch-with-debounce",
        "@workflow",
        define(
            id="cat-bad",
            batch_events={"max_size": 2, "timeout": "1s"},
            debounce={"period": "1s"},
        ),
        "batch_events cannot be combined with debounce",
    ),
    Case(
        "wf-rate-limit-zero",
        "@workflow",
        define(id="cat-bad", rate_limit={"limit": 0, "period": "1m"}),
        "rate_limit limit must be a whole number from 1 to 10000, got 0",
    ),
    Case(
        "wf-singleton-mode",
        "@workflow",
        define(id="cat-bad", singleton={"mode": "queue"}),
        "singleton mode must be 'skip' or 'cancel', got 'queue'",
    ),
    Case(
        "wf-idempotency-unparsable",
        "@workflow",
        define(id="cat-bad", idempotency="event.data.("),
        "idempotency: the CEL expression .* does not parse",
    ),
    Case(
        "wf-trigger-star-middle-segment",
        "@workflow",
        define(id="cat-bad", trigger="a/*/b"),
        "trigger 'a/\\*/b' is not an event name",
    ),
    # flow control: concurrency, throttle, priority
    *options_refused(
        "flow",
        (
            (
                "concurrency-zero",
                {"concurrency": 0},
                "concurrency: limit must be a whole number from 1 to 100000, got 0",
            ),
            (
                "concurrency-three-limits",
                {"concurrency": [{"limit": 1}, {"limit": 1, "key": "event.data.a"}, {"limit": 2}]},
                "concurrency .*at most 2 are allowed",
            ),
            (
                "concurrency-unknown-key",
                {"concurrency": {"limit": 1, "scope": "x"}},
                r"concurrency .*unknown keys \['scope'\]",
            ),
            (
                "concurrency-no-limit",
                {"concurrency": {"key": "event.data.a"}},
                "concurrency .*needs a 'limit'",
            ),
            (
                "concurrency-key-unparsable",
                {"concurrency": {"limit": 1, "key": "event.data.("}},
                r"concurrency key: the CEL expression .*does not parse at line 1",
            ),
            (
                "throttle-period-zero",
                {"throttle": {"limit": 1, "period": 0}},
                "throttle period: the duration must be more",
            ),
            ("throttle-no-period", {"throttle": {"limit": 1}}, "throttle needs a 'period'"),
            (
                "priority-unparsable",
                {"priority": {"run": "1 +"}},
                "priority run: the CEL expression",
            ),
            (
                "priority-not-dict",
                {"priority": "event.data.p"},
                "priority must be a dict with one key, 'run'",
            ),
        ),
    ),
    # admission: rate_limit, debounce, batch_events, singleton, idempotency
    *options_refused(
        "admission",
        (
            (
                "batch-with-singleton",
                {"batch_events": {"max_size": 2, "timeout": "1s"}, "singleton": {"mode": "skip"}},
                "batch_events cannot be combined with singleton",
            ),
            (
                "batch-with-idempotency",
                {"batch_events": {"max_size": 2, "timeout": "1s"}, "idempotency": "event.id"},
                "batch_events cannot be combined with idempotency",
            ),
            ("rate-limit-no-period", {"rate_limit": {"limit": 1}}, "rate_limit needs a 'period'"),
            (
                "rate-limit-unknown-key",
                {"rate_limit": {"limit": 1, "period": "1m", "x": 1}},
                r"rate_limit .*unknown keys \['x'\]",
            ),
            (
                "debounce-bad-period",
                {"debounce": {"period": "soon"}},
                "debounce period: 'soon' is not a duration",
            ),
            (
                "batch-no-timeout",
                {"batch_events": {"max_size": 2}},
                "batch_events needs a 'timeout'",
            ),
            (
                "batch-too-big",
                {"batch_events": {"max_size": 10_001, "timeout": "1s"}},
                "batch_events max_size must be a whole number from 1 to 10000, got 10001",
            ),
            (
                "singleton-no-mode",
                {"singleton": {"key": "event.data.a"}},
                "singleton needs a 'mode'",
            ),
            (
                "debounce-key-unparsable",
                {"debounce": {"period": "1s", "key": "a ==="}},
                "debounce key: the CEL expression",
            ),
        ),
    ),
    # cron=: each bad entry alone and as the second of a list
    *[
        Case(
            f"wf-cron-{name}{'-in-list' if listed else ''}",
            "@workflow",
            define(id="cat-bad", cron=["0 2 * * *", entry] if listed else entry),
            message.replace("cron[?]", r"cron\[1\]" if listed else r"cron\[0\]"),
        )
        for name, entry, message in (
            ("minute-61", "61 * * * *", r"cron[?]: .*minute field '61' at position 1"),
            ("hour-25", "0 25 * * *", r"cron[?]: .*hour field '25' at position 3"),
            ("three-fields", "* * *", r"cron[?]: .*has 3 fields"),
            ("seven-fields", "* * * * * * *", r"cron[?]: .*has 7 fields"),
            (
                "unknown-zone",
                "TZ=Mars/Olympus 0 2 * * *",
                r"cron[?]: .*unknown time zone 'Mars/Olympus' at position 4",
            ),
            (
                "month-13-in-zone",
                "TZ=Europe/Paris 0 2 * 13 *",
                r"cron[?]: .*month field '13' at position 23",
            ),
            ("empty", "", r"cron[?]: .*non-empty string"),
        )
        for listed in (False, True)
    ],
    # version= and on_nondeterminism= (code evolution)
    Case(
        "wf-version-too-long",
        "@workflow",
        define(id="cat-bad", trigger="cat/bad", version="x" * 101),
        "version must be a label of at most 100 characters",
        WorkflowDefinitionError,
    ),
    Case(
        "wf-on-nondeterminism-unknown",
        "@workflow",
        define(id="cat-bad", trigger="cat/bad", on_nondeterminism="ignore"),
        "on_nondeterminism must be 'fail' or .*got 'ignore'",
        WorkflowDefinitionError,
    ),
    Case(
        "wf-not-a-function",
        "@workflow",
        lambda env: workflow(id="cat-bad")(42),
        "@workflow must decorate a function",
    ),
    Case(
        "wf-duplicate-id",
        "@workflow",
        define(id="cat-step"),
        "workflow id 'cat-step' is defined twice",
    ),
]
for _case in WORKFLOW_CASES:
    _case.error = WorkflowDefinitionError


# --- management commands -----------------------------------------------------------------
def command(*args: Any) -> Callable[[Any], Any]:
    def act(env: Any) -> None:
        values = [value(env) if callable(value) else value for value in args]
        call_command(*values, stdout=StringIO(), stderr=StringIO())

    return act


def run_id(env: Any) -> str:
    return str(env.run.pk)


def event_id(env: Any) -> str:
    return str(env.event.pk)


def with_run(env: Any) -> None:
    env.run = env.completed_run()


def with_scheduled(env: Any) -> None:
    env.event = Event.objects.get(pk=env.scheduled_event())


def with_active_run(env: Any) -> None:
    with testing.no_broker():
        event_id = eventbus.send("test/steps", {"steps": 2})
    env.run = WorkflowRun.objects.get(event_id=event_id)


def with_emitted(env: Any) -> None:
    env.run = env.completed_run()
    env.event = env.run.event


UNKNOWN = "00000000-0000-0000-0000-000000000001"
COMMAND_CASES = [
    Case("cmd-send-data-not-json", "command", command("send_event", "cat/x", "--data", "{oops"),
         "--data is not valid JSON"),
    Case("cmd-send-data-list", "command", command("send_event", "cat/x", "--data", "[1]"),
         "must be a JSON object"),
    Case("cmd-send-data-nan", "command", command("send_event", "cat/x", "--data", '{"x": NaN}'),
         r"data\.x: nan is not allowed"),
    Case("cmd-send-ts-word", "command", command("send_event", "cat/x", "--ts", "soon"),
         "--ts must be a number of Unix milliseconds, got 'soon'"),
    Case("cmd-send-ts-year-10000", "command",
         command("send_event", "cat/x", "--ts", str(YEAR_10000_MS)), "out of range"),
    Case("cmd-send-bad-name", "command", command("send_event", "has space"), "malformed"),
    Case("cmd-send-unknown-workspace", "command",
         command("send_event", "cat/x", "--workspace", "nowhere"), "unknown workspace 'nowhere'"),
    Case("cmd-replay-malformed-id", "command", command("replay_run", "not-a-uuid"),
         "'not-a-uuid' is not a valid run id"),
    Case("cmd-replay-unknown-id", "command", command("replay_run", UNKNOWN),
         f"no run has the id {UNKNOWN}"),
    Case("cmd-replay-unknown-step", "command",
         command("replay_run", run_id, "--from-step", "nope"),
         "has no step 'nope'; its steps are: 's0', 's1'", setup=with_run),
    Case("cmd-replay-id-and-selection", "command",
         command("replay_run", run_id, "--workflow", "t-steps"),
         "give either RUN_ID or selection options", setup=with_run),
    Case("cmd-replay-wrong-workspace", "command",
         command("replay_run", run_id, "--workspace", "other"),
         "belongs to workspace 'default', not 'other'", setup=with_run),
    Case("cmd-cancel-finished", "command", command("cancel_run", run_id),
         "had already finished \\(completed\\)", setup=with_run),
    Case("cmd-cancel-malformed-id", "command", command("cancel_run", "12"),
         "'12' is not a valid run id"),
    Case("cmd-show-wrong-workspace", "command", command("show_run", run_id, "--workspace", "x"),
         "belongs to workspace 'default', not 'x'", setup=with_run),
    Case("cmd-replay-event-scheduled", "command", command("replay_event", event_id),
         "is still scheduled", setup=with_scheduled),
    Case("cmd-replay-event-unknown", "command", command("replay_event", UNKNOWN),
         f"no event has the id {UNKNOWN}"),
    Case("cmd-list-bad-status", "command", command("list_runs", "--status", "done"),
         "unknown status 'done'; use one of: queued"),
    Case("cmd-list-limit-zero", "command", command("list_runs", "--limit", "0"),
         "argument --limit: must be from 1 to 100000, got 0"),
    Case("cmd-list-since-garbage", "command", command("list_runs", "--since", "last week"),
         "--since 'last week' is not an ISO date"),
    Case("cmd-list-unknown-workspace", "command", command("list_runs", "--workspace", "nope"),
         "unknown workspace 'nope'"),
    Case("cmd-purge-negative-age", "command", command("purge_runs", "--older-than", "-1"),
         "argument --older-than: must be a number of days from 0 to 36500, got '-1'"),
    Case("cmd-purge-active-status", "command",
         command("purge_runs", "--older-than", "1", "--status", "queued"),
         "runs with status 'queued' are still active and cannot be purged; purge one of: "
         "cancelled, completed, failed"),
    Case("cmd-purge-unknown-status", "command",
         command("purge_runs", "--older-than", "1", "--status", "done"),
         "unknown status 'done'; use one of: cancelled, completed, failed"),
    *[
        Case(f"cmd-purge-age-{age}", "command", command("purge_runs", "--older-than", age),
             f"argument --older-than: must be a number of days from 0 to 36500, got '{age}'")
        for age in ("nan", "inf", "1e10", "soon")
    ],
    Case("cmd-purge-batch-zero", "command",
         command("purge_runs", "--older-than", "1", "--batch-size", "0"),
         "argument --batch-size: must be from 1 to 10000, got 0"),
    Case("cmd-replay-limit-negative", "command",
         command("replay_run", "--workflow", "t-steps", "--limit", "-1"),
         "argument --limit: must be from 1 to 1000000000, got -1"),
    Case("cmd-replay-unknown-workflow", "command", command("replay_run", "--workflow", "nope"),
         "workflow 'nope' is not registered in this process"),
    *[
        Case(f"cmd-replay-{flag}-out-of-range", "command",
             command("replay_run", "--workflow", "t-steps", f"--{flag}", when),
             re.escape(f"--{flag} '{when}' is out of range: the date must fall between the "
                       "years 1 and 9999 in UTC"))
        for flag, when in (("since", "9999-12-31T23:00:00-16:00"),
                           ("until", "0001-01-01T00:00:00+15:00"))
    ],
    Case("cmd-send-data-huge-integer", "command",
         command("send_event", "cat/x", "--data", '{"n": ' + "9" * 5000 + "}"),
         "--data is not valid JSON: Exceeds the limit \\(4300 digits\\)"),
    Case("cmd-send-data-deep", "command",
         command("send_event", "cat/x", "--data", '{"a": ' * 100_000 + "1" + "}" * 100_000),
         "--data is nested too deeply to read"),
    Case("cmd-show-width-huge", "command", command("show_run", run_id, "--width", "1000000000"),
         "argument --width: must be from 10 to 500, got 1000000000", setup=with_run),
    Case("cmd-send-name-blank", "command", command("send_event", "  "),
         "event name '  ' is malformed: use printable characters without spaces"),
    Case("cmd-send-reserved-name", "command", command("send_event", "workflows/run.finished"),
         f"event name 'workflows/run.finished' {RESERVED}"),
    Case("cmd-cancel-unknown-id", "command", command("cancel_run", UNKNOWN),
         f"no run has the id {UNKNOWN}"),
    Case("cmd-show-malformed-id", "command", command("show_run", "not-a-uuid"),
         "'not-a-uuid' is not a valid run id"),
    Case("cmd-show-unknown-id", "command", command("show_run", UNKNOWN),
         f"no run has the id {UNKNOWN}"),
    Case("cmd-replay-event-malformed-id", "command", command("replay_event", "not-a-uuid"),
         "'not-a-uuid' is not a valid event id"),
    Case("cmd-show-event-unknown", "command", command("show_event", UNKNOWN),
         f"no event has the id {UNKNOWN}"),
    Case("cmd-show-event-malformed-id", "command", command("show_event", "nope"),
         "'nope' is not a valid event id"),
    Case("cmd-cancel-wrong-workspace", "command",
         command("cancel_run", run_id, "--workspace", "other"),
         "belongs to workspace 'default', not 'other'", setup=with_run),
    Case("cmd-replay-event-wrong-workspace", "command",
         command("replay_event", event_id, "--workspace", "other"),
         "belongs to workspace 'default', not 'other'", setup=with_emitted),
    Case("cmd-replay-nothing-selected", "command", command("replay_run"), "give a RUN_ID"),
    Case("cmd-replay-id-and-status", "command",
         command("replay_run", UNKNOWN, "--status", "failed"), "give either RUN_ID .*not both"),
    Case("cmd-replay-from-step-without-id", "command",
         command("replay_run", "--status", "failed", "--from-step", "x"),
         "--from-step needs a RUN_ID"),
    Case("cmd-replay-bad-status", "command", command("replay_run", "--status", "broke"),
         "unknown status 'broke'; use one of: queued"),
    Case("cmd-replay-since-garbage", "command",
         command("replay_run", "--status", "failed", "--since", "last tuesday"),
         "--since 'last tuesday' is not an ISO date"),
    Case("cmd-key-unknown-workspace", "command",
         command("create_event_key", "--workspace", "nope"), "unknown workspace 'nope'"),
    Case("cmd-key-reserved-prefix", "command",
         command("create_event_key", "--workspace", "other", "--prefix", "workflows/"),
         "prefix 'workflows/' is not a valid name prefix: event name 'workflows/' is reserved"),
    Case("cmd-key-malformed-prefix", "command",
         command("create_event_key", "--workspace", "other", "--prefix", "has space"),
         "prefix 'has space' is not a valid name prefix: event name 'has space' is malformed"),
    Case("cmd-key-no-workspace", "command", command("create_event_key"),
         "the following arguments are required: --workspace"),
    Case("cmd-resume-not-paused", "command", command("resume_workflow", "t-steps"),
         "workflow 't-steps' is not paused"),
    Case("cmd-cancel-id-and-workflow", "command",
         command("cancel_run", UNKNOWN, "--workflow", "t-steps"),
         "give either a RUN_ID or --workflow"),
    Case("cmd-cancel-dry-run-with-id", "command", command("cancel_run", UNKNOWN, "--dry-run"),
         "--dry-run .*go with --workflow"),
]  # fmt: skip
for _case in COMMAND_CASES:
    _case.error = CommandError


# --- admin pages and actions ----------------------------------------------------------------
def admin_get(url: Callable[[Any], str], user: str) -> Callable[[Any], str]:
    return lambda env: env.shown(env.as_user(user).get(url(env)))


def admin_post(url: Callable[[Any], str], user: str, data: Any) -> Callable[[Any], str]:
    def act(env: Any) -> str:
        payload = data(env) if callable(data) else data
        if "action" in payload:
            payload = {"index": "0", **payload}  # as the changelist's action form posts
        return env.shown(env.as_user(user).post(url(env), payload))

    return act


def run_url(name: str) -> Callable[[Any], str]:
    return lambda env: reverse(f"admin:workflows_workflowrun_{name}", args=[env.run.pk])


def event_url(name: str) -> Callable[[Any], str]:
    return lambda env: reverse(f"admin:eventbus_event_{name}", args=[env.event.pk])


def changelist(env: Any) -> str:
    return reverse("admin:workflows_workflowrun_changelist")


def with_two_runs(env: Any) -> None:
    env.run = env.completed_run()
    env.other = env.completed_run()


ADMIN_CASES = [
    Case("admin-anonymous-replay", "admin", admin_get(run_url("replay"), "anonymous"),
         "302 .*/admin/login/", setup=with_run),
    Case("admin-staff-without-view", "admin", admin_get(changelist, "nobody"), "^403",
         setup=with_run),
    Case("admin-viewer-replay-page", "admin", admin_get(run_url("replay"), "viewer"), "^403",
         setup=with_run),
    Case("admin-viewer-replay-post", "admin",
         admin_post(run_url("replay"), "viewer", {"confirmed": "yes"}), "^403", setup=with_run),
    Case("admin-viewer-cancel-post", "admin",
         admin_post(run_url("cancel"), "viewer", {"confirmed": "yes"}), "^403", setup=with_run),
    Case("admin-viewer-replay-event", "admin",
         admin_post(event_url("replay"), "viewer", {"confirmed": "yes"}), "^403",
         setup=with_scheduled),
    Case("admin-viewer-bulk-replay-action", "admin",
         admin_post(changelist, "viewer", lambda env: {
             "action": "replay_runs", "_selected_action": [env.run.pk], "confirmed": "yes"}),
         "^200 .*the page offers no replay_runs action", setup=with_run),
    Case("admin-action-without-selection", "admin",
         admin_post(changelist, "operator", {"action": "cancel_runs", "confirmed": "yes"}),
         "Items must be selected in order to perform actions", setup=with_run),
    Case("admin-replay-from-step-two-runs", "admin",
         admin_post(changelist, "operator", lambda env: {
             "action": "replay_from_step", "_selected_action": [env.run.pk, env.other.pk]}),
         "Select exactly one run to replay from a step", setup=with_two_runs),
    Case("admin-replay-unknown-step", "admin",
         admin_post(run_url("replay"), "operator", {"confirmed": "yes", "from_step": "nope"}),
         "has no step 'nope'; its steps are: 's0', 's1'", setup=with_run),
    Case("admin-cancel-finished", "admin",
         admin_post(run_url("cancel"), "operator", {"confirmed": "yes"}),
         "had already finished \\(completed\\)", setup=with_run),
    Case("admin-replay-scheduled-event", "admin",
         admin_post(event_url("replay"), "operator", {"confirmed": "yes"}),
         "is still scheduled", setup=with_scheduled),
    Case("admin-blind-cancel-page", "admin", admin_get(run_url("cancel"), "blind-operator"),
         "^403", setup=with_run),
    Case("admin-blind-cancel-post", "admin",
         admin_post(run_url("cancel"), "blind-operator", {"confirmed": "yes"}), "^403",
         setup=with_active_run),
    Case("admin-blind-replay-post", "admin",
         admin_post(run_url("replay"), "blind-operator", {"confirmed": "yes"}), "^403",
         setup=with_run),
    Case("admin-blind-replay-event", "admin",
         admin_post(event_url("replay"), "blind-operator", {"confirmed": "yes"}), "^403",
         setup=with_emitted),
    *[
        Case(f"admin-nul-in-{name}-{key}", "admin",
             admin_get(lambda env, page=page, key=key: f"{reverse(page)}?{key}=%00", "viewer"),
             f"^302 [^?]*/ .*The filter '{key}' contained a NUL character")
        for name, page, key in (
            ("runs", "admin:workflows_workflowrun_changelist", "workflow_id"),
            ("runs", "admin:workflows_workflowrun_changelist", "status"),
            ("runs", "admin:workflows_workflowrun_changelist", "q"),
            ("runs", "admin:workflows_workflowrun_changelist", "created_at__gte"),
            ("events", "admin:eventbus_event_changelist", "name"),
            ("events", "admin:eventbus_event_changelist", "q"),
        )
    ],
    Case("admin-replay-unknown-run", "admin",
         admin_get(lambda env: reverse("admin:workflows_workflowrun_replay", args=[UNKNOWN]),
                   "operator"),
         f"(?i)workflow run with ID “{UNKNOWN}” doesn’t exist"),
]  # fmt: skip


# --- wait_for_event / invoke / cancel_on ----------------------------------------------------
# Cases for the coordination steps and options go here (same Case shape; "step" cases
# run their ``act`` as the body of the ``cat-step`` workflow).
def wait(**options: Any) -> Callable[[Any], Any]:
    return lambda ctx: ctx.step.wait_for_event("w", **{"event": "cat/e", "timeout": 5, **options})


COORDINATION_CASES = [
    Case(
        "wfe-timeout-zero",
        "step",
        wait(timeout=0),
        r"wait_for_event\('w'\): timeout: .*more than zero",
    ),
    Case(
        "wfe-timeout-negative",
        "step",
        wait(timeout=-1),
        r"wait_for_event\('w'\): timeout: the duration must be more than zero, got -1",
    ),
    Case(
        "wfe-timeout-missing",
        "step",
        wait(timeout=None),
        r"wait_for_event\('w'\): timeout is required",
    ),
    Case(
        "wfe-timeout-garbage",
        "step",
        wait(timeout="3 fortnights"),
        r"wait_for_event\('w'\): timeout: '3 fortnights' is not a duration",
    ),
    Case("wfe-timeout-century", "step", wait(timeout="40000d"), "longer than the limit"),
    Case(
        "wfe-match-bare-field",
        "step",
        wait(match="orderId"),
        r"wait_for_event\('w'\): match must be a dotted path into the event's data .*got 'orderId'",
    ),
    Case("wfe-match-not-str", "step", wait(match=5), "dotted path"),
    Case(
        "wfe-match-empty-part",
        "step",
        wait(match="data..id"),
        r"wait_for_event\('w'\): match must be a dotted path .*got 'data\.\.id'",
    ),
    Case(
        "wfe-match-absent-in-trigger",
        "step",
        wait(match="data.orderId"),
        "trigger event has no data.orderId",
    ),
    Case(
        "wfe-if-unparsable",
        "step",
        wait(if_="async.data.x =="),
        r"wait_for_event\('w'\): the CEL expression does not parse",
    ),
    Case("wfe-if-empty", "step", wait(if_=" "), "if_ must be a CEL expression"),
    Case("wfe-event-missing", "step", wait(event=None), "event name must be a string"),
    Case(
        "wfe-event-wildcard",
        "step",
        wait(event="cat/*"),
        r"wait_for_event\('w'\): event: event name 'cat/\*' is malformed",
    ),
    Case(
        "wfe-event-empty",
        "step",
        wait(event=""),
        r"wait_for_event\('w'\): event: event name must not be empty",
    ),
    Case(
        "invoke-plain-function",
        "step",
        lambda ctx: ctx.step.invoke("i", workflow=len),
        r"step.invoke\('i'\): workflow must be a @workflow function .*\(decorate the function with "
        r"@workflow\)",
    ),
    Case(
        "invoke-timeout-zero",
        "step",
        lambda ctx: ctx.step.invoke("i", workflow="cat-step", timeout=0),
        r"step.invoke\('i'\): .*timeout: the duration must be more than zero, got 0",
    ),
    Case(
        "invoke-data-nan",
        "step",
        lambda ctx: ctx.step.invoke("i", workflow="cat-step", data={"x": math.nan}),
        r"step.invoke\('i'\): .*data\.x: nan is not allowed",
    ),
    Case(
        "invoke-unknown-id",
        "step",
        lambda ctx: ctx.step.invoke("i", workflow="no-such-wf"),
        "unknown workflow id 'no-such-wf'",
        failed_memo=True,
    ),
    Case(
        "parallel-empty",
        "step",
        lambda ctx: ctx.step.parallel("p", []),
        r"step.parallel\('p'\): branches must be a non-empty list of functions",
    ),
    Case(
        "parallel-not-callable",
        "step",
        lambda ctx: ctx.step.parallel("p", [len, 3]),
        r"step.parallel\('p'\): branch 1 is a int, not a function",
    ),
    Case(
        "parallel-too-many",
        "step",
        lambda ctx: ctx.step.parallel("p", [len] * 101),
        r"step.parallel\('p'\): 101 branches; the limit is 100",
    ),
    Case(
        "cancel-on-no-event",
        "@workflow",
        define(id="cat-c", cancel_on=[{"match": "data.x"}]),
        r"cancel_on\[0\] needs an 'event'.*got None",
        WorkflowDefinitionError,
    ),
    Case(
        "cancel-on-wildcard",
        "@workflow",
        define(id="cat-c", cancel_on=[{"event": "cat/*"}]),
        "no wildcard",
        WorkflowDefinitionError,
    ),
    Case(
        "cancel-on-bad-match",
        "@workflow",
        define(id="cat-c", cancel_on=[{"event": "cat/e", "match": "x"}]),
        r"cancel_on\[0\]: match must be a dotted path .*got 'x'",
        WorkflowDefinitionError,
    ),
    Case(
        "cancel-on-bad-if",
        "@workflow",
        define(id="cat-c", cancel_on=[{"event": "cat/e", "if": "a ==="}]),
        r"cancel_on\[0\]: the CEL expression does not parse",
        WorkflowDefinitionError,
    ),
    Case(
        "cancel-on-zero-timeout",
        "@workflow",
        define(id="cat-c", cancel_on=[{"event": "cat/e", "timeout": 0}]),
        r"cancel_on\[0\] timeout: the duration must be more than zero, got 0",
        WorkflowDefinitionError,
    ),
    Case(
        "cancel-on-unknown-key",
        "@workflow",
        define(id="cat-c", cancel_on=[{"event": "cat/e", "when": 1}]),
        r"cancel_on\[0\] has unknown keys \['when'\]; allowed: event, match, if, timeout",
        WorkflowDefinitionError,
    ),
    Case(
        "cancel-on-not-a-list",
        "@workflow",
        define(id="cat-c", cancel_on="cat/e"),
        "cancel_on must be a list of dicts",
        WorkflowDefinitionError,
    ),
    Case(
        "timeouts-negative",
        "@workflow",
        define(id="cat-c", timeouts={"finish": -5}),
        r"timeouts\['finish'\]: the duration must be more than zero, got -5",
        WorkflowDefinitionError,
    ),
    Case(
        "timeouts-unknown-key",
        "@workflow",
        define(id="cat-c", timeouts={"end": "1h"}),
        "'start' and/or 'finish'",
        WorkflowDefinitionError,
    ),
    Case(
        "on-failure-not-callable",
        "@workflow",
        define(id="cat-c", on_failure="tell me"),
        "on_failure must be a plain function",
        WorkflowDefinitionError,
    ),
]


# --- schedules.create ----------------------------------------------------------------------
def with_taken(env: Any) -> None:
    schedules.create("taken", workflow="s-target", cron="0 2 * * *")


def schedule(**kwargs: Any) -> Callable[[Any], Any]:
    def act(env: Any) -> Any:
        arguments = {"schedule_id": "new", "workflow": "s-target", "cron": "0 2 * * *", **kwargs}
        return schedules.create(arguments.pop("schedule_id"), **arguments)

    return act


SCHEDULE_CASES = [
    Case(f"schedule-{name}", "schedules.create", schedule(**kwargs), message, error,
         setup=with_taken)
    for name, kwargs, error, message in (
        ("cron-minute-61", {"cron": "61 * * * *"}, WorkflowDefinitionError,
         "minute field '61' at position 1"),
        ("cron-unknown-zone", {"cron": "TZ=Nowhere/City * * * * *"}, WorkflowDefinitionError,
         "unknown time zone 'Nowhere/City'"),
        ("cron-empty-list", {"cron": []}, WorkflowDefinitionError,
         r"cron must be a cron entry such as '0 2 \* \* \*' or a non-empty list of them, got \[\]"),
        ("unknown-workflow", {"workflow": "no-such-workflow"}, UnknownWorkflowError,
         "unknown workflow id 'no-such-workflow'"),
        ("data-datetime", {"data": {"when": datetime(2024, 1, 1)}}, ScheduleError,
         "a datetime is not JSON-serialisable"),
        ("data-int-key", {"data": {1: "x"}}, ScheduleError,
         r"data is refused: .*data\.payload: key 1 is a int; JSON object keys must be strings"),
        ("id-space", {"schedule_id": "has space"}, ScheduleError,
         "schedule id 'has space' is invalid"),
        ("id-code-prefix", {"schedule_id": "workflow:x"}, ScheduleError,
         "schedule id 'workflow:x' is invalid"),
        ("id-taken", {"schedule_id": "taken"}, DuplicateScheduleError,
         "a schedule with the id 'taken' exists already"),
        ("unknown-workspace", {"workspace": "nowhere"}, ValueError,
         "unknown workspace 'nowhere'"),
    )
]  # fmt: skip


# --- the HTTP event API (POST /e/<key>) and webhooks (POST /w/<id>) -----------------------------
BIG = 512 * 1024
SECRET = "It's a Secret to Everybody"


def with_key(env: Any) -> None:
    Workspace.objects.create(slug="shop")
    env.key = eventbus.create_event_key("shop", name="storefront")[1]


def replied(reply: Any) -> str:
    """Status and the JSON reply, as one line the message regex reads."""
    body = reply.json()
    return f"{reply.status_code} status={body.get('status')} ids={body.get('ids')} " + (
        f"error={body.get('error')}"
    )


def api_post(body: Any) -> Callable[[Any], str]:
    def act(env: Any) -> str:
        raw = body if isinstance(body, bytes | str) else json.dumps(body)
        return replied(env.client.post(f"/e/{env.key}", raw, content_type="application/json"))

    return act


def with_hook(transform: str = "") -> Callable[[Any], None]:
    def setup(env: Any) -> None:
        env.hook = Webhook.objects.create(
            scheme=WebhookScheme.HMAC_SHA256, secret=SECRET, name="gh", transform=transform,
            workspace=Workspace.objects.get_or_create(slug="repo")[0], event_name="github/push",
        )  # fmt: skip

    return setup


def hook_post(body: Any, *, secret: str = SECRET, signed: Any = None, sign: bool = True):
    """POST ``body`` as GitHub would; ``signed`` is the body the signature is computed on."""

    def act(env: Any) -> str:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        digest = hmac.new(secret.encode(), signed or raw, hashlib.sha256).hexdigest()
        headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "72d3162e-cc78"}
        if sign:
            headers["X-Hub-Signature-256"] = f"sha256={digest}" if sign is True else digest
        reply = env.client.post(
            f"/w/{env.hook.pk}", raw, content_type="application/json", headers=headers
        )
        return replied(reply)

    return act


def api_refused(message: str) -> str:
    return rf"^400 status=400 ids=\[\] error=.*{re.escape(message)}"


HTTP_CASES = [
    Case(f"api-{name}", "http", api_post(body), api_refused(message), setup=with_key)
    for name, body, message in (
        ("not-json", b"{not json", "not valid JSON"),
        ("empty-body", b"", "the body is empty: send a JSON event object or an array of them"),
        ("not-utf8", b"\xff\xfe{}", "not UTF-8"),
        ("nan", b'{"name": "shop/x", "data": {"n": NaN}}', "NaN is not allowed"),
        ("json-string", '"shop/x"', "JSON string"),
        ("empty-array", [], "empty array"),
        ("item-number", [{"name": "shop/ok"}, 7], "events[1] is a JSON number"),
        ("item-no-name", [{"name": "shop/ok"}, {"data": {}}], "events[1] has no 'name'"),
        ("name-int", {"name": 5}, "event name must be a string"),
        ("name-empty", {"name": ""}, "event name must not be empty"),
        ("name-space", {"name": "has space"}, "'has space' is malformed"),
        ("name-bidi", {"name": "shop/\u202eevil"}, "U+202E"),
        ("data-list", {"name": "shop/x", "data": [1]}, "must be a JSON object"),
        ("ts-word", {"name": "shop/x", "ts": "soon"}, "ts must be a number"),
        ("id-zero-width", {"name": "shop/x", "id": "a\u200bb"}, "U+200B"),
        ("v-int", {"name": "shop/x", "v": 2}, "'v' must be a string"),
        ("workspace-field", {"name": "shop/x", "workspace": "other"},
         "unknown fields ['workspace']"),
        ("reserved-name", {"name": "workflows/run.failed", "data": {}},
         f"event name 'workflows/run.failed' {RESERVED}"),
        ("oversized-item", [{"name": "shop/ok"}, {"name": "shop/big", "data": {"x": "a" * BIG}}],
         f"the limit is {BIG} bytes"),
    )
] + [
    Case(f"webhook-signature-{name}", "http", act,
         rf"^401 status=401 ids=\[\] error=bad signature: {message}", setup=with_hook())
    for name, act, message in (
        ("missing", hook_post({"ref": "main"}, sign=False), "missing X-Hub-Signature-256 header"),
        ("wrong-secret", hook_post({"ref": "main"}, secret="guess"),
         "X-Hub-Signature-256 does not match the body"),
        ("tampered", hook_post({"ref": "evil"}, signed=json.dumps({"ref": "main"}).encode()),
         "X-Hub-Signature-256 does not match the body"),
        ("no-prefix", hook_post({"ref": "main"}, sign="bare"),
         "X-Hub-Signature-256 does not match the body"),
    )
] + [
    Case(f"webhook-transform-{name}", "http", hook_post(body), message, setup=with_hook(path))
    for name, path, body, message in (
        ("raises", "tests.test_webhooks.explodes", {"n": 1},
         api_refused("no 'action' in the payload")),
        ("reserved-name", "tests.test_webhooks.forges", {"n": 1},
         api_refused(f"event name 'workflows/run.failed' {RESERVED}")),
        ("body-not-object", "", [1, 2],
         api_refused("the body is a JSON list; the default transform needs a JSON object")),
    )
]  # fmt: skip


# --- Python API: RetryAfterError, the registry, the console services ------------------------------
def with_lonely(env: Any) -> None:
    with testing.no_broker():
        env.event = Event.objects.get(pk=eventbus.send("cat/lonely", {}))


API_CASES = [
    *[
        Case(f"retry-after-{name}", "RetryAfterError", lambda env, bad=bad: RetryAfterError(
            "later", bad), "retry_after must be from 0 seconds to 100 years")
        for name, bad in (("nan", math.nan), ("inf", math.inf), ("negative", -1),
                          ("1e12", 1e12), ("negative-timedelta", timedelta(days=-1)))
    ],
    Case("registry-unknown-id", "registry.get", lambda env: registry.get("nope"),
         "unknown workflow id 'nope'; registered: .*, t-steps, ", UnknownWorkflowError),
    Case("svc-replay-malformed-id", "services", lambda env: services.replay_run("not-a-uuid"),
         "'not-a-uuid' is not a valid run id", MalformedIdError),
    Case("svc-replay-unknown-id", "services", lambda env: services.replay_run(UNKNOWN),
         f"no run has the id {UNKNOWN}", UnknownRunError),
    Case("svc-replay-unknown-step", "services",
         lambda env: services.replay_run(env.run.pk, from_step="nope"),
         "has no step 'nope'; its steps are: 's0', 's1'", UnknownStepError, setup=with_run),
    Case("svc-replay-wrong-workspace", "services",
         lambda env: services.replay_run(env.run.pk, workspace="other"),
         "belongs to workspace 'default', not 'other'", WrongWorkspaceError, setup=with_run),
    Case("svc-replay-event-unknown", "services", lambda env: services.replay_event(UNKNOWN),
         f"no event has the id {UNKNOWN}", UnknownEventError),
    Case("svc-replay-event-malformed-id", "services", lambda env: services.replay_event("123"),
         "'123' is not a valid event id", MalformedIdError),
    Case("svc-replay-event-scheduled", "services",
         lambda env: services.replay_event(env.event.pk), "is still scheduled",
         NotReplayableError, setup=with_scheduled),
    Case("svc-replay-event-nobody-listens", "services",
         lambda env: services.replay_event(env.event.pk), "no workflow is subscribed",
         NotReplayableError, setup=with_lonely),
    Case("svc-cancel-unknown-id", "services", lambda env: services.cancel_run(UNKNOWN),
         f"no run has the id {UNKNOWN}", UnknownRunError),
    Case("svc-select-bad-status", "services", lambda env: services.select_runs(status="broken"),
         "unknown status 'broken'; use one of: queued", ConsoleError),
    Case("svc-parse-when-garbage", "services", lambda env: services.parse_when("yesterday-ish"),
         "'yesterday-ish' is not an ISO date", ConsoleError),
    Case("svc-purge-active-status", "services",
         lambda env: list(retention.purge_runs(30, ["running"])),
         "runs with status 'running' are still active and cannot be purged; purge one of: "
         "cancelled, completed, failed", ConsoleError),
    Case("svc-purge-batch-zero", "services",
         lambda env: list(retention.purge_runs(30, None, batch_size=0)),
         "batch_size must be a whole number of 1 or more, got 0", ConsoleError),
    Case("svc-pause-unknown-workflow", "services",
         lambda env: workflows.pause_workflow("no-such-workflow"),
         "unknown workflow id 'no-such-workflow'", ConsoleError),
    Case("svc-pause-unknown-workspace", "services",
         lambda env: workflows.pause_workflow("t-steps", workspace="nope"),
         "unknown workspace 'nope'", ConsoleError),
    Case("svc-cancel-runs-bad-status", "services",
         lambda env: list(pausing.cancel_runs("t-steps", statuses=["completed"])),
         "unknown status 'completed'", ConsoleError),
]  # fmt: skip


for _case in COORDINATION_CASES:
    if _case.entry == "step" and _case.id not in (
        "invoke-unknown-id",
        "wfe-match-absent-in-trigger",
    ):
        _case.stored_type = "StepUsageError"

CASES = (
    SEND_CASES
    + STEP_CASES
    + WORKFLOW_CASES
    + COMMAND_CASES
    + ADMIN_CASES
    + COORDINATION_CASES
    + SCHEDULE_CASES
    + HTTP_CASES
    + API_CASES
)
STEP_BODIES.update({case.id: case.act for case in COORDINATION_CASES if case.entry == "step"})


class Env:
    """What the cases need: rows to act on, users, a test client."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.run: WorkflowRun | None = None
        self.event: Event | None = None
        self.other: WorkflowRun | None = None
        self.key: str | None = None  # an event key (http cases)
        self.hook: Webhook | None = None

    def completed_run(self) -> WorkflowRun:
        with testing.no_broker():
            event_id = eventbus.send("test/steps", {"steps": 2})
        testing.drain(skip_time=True)
        run = WorkflowRun.objects.get(event_id=event_id)
        assert run.status == RunStatus.COMPLETED
        return run

    def scheduled_event(self) -> str:
        return eventbus.send("cat/later", {}, ts=bus.now_ms() + 3_600_000)

    def as_user(self, name: str) -> Any:
        self.client.logout()
        if name == "anonymous":
            return self.client
        user = User.objects.create_user(name, password="pw", is_staff=True)
        codenames = {
            "nobody": [],
            # May act but not see: the per-object pages need seeing too.
            "blind-operator": ["replay_run", "cancel_run", "replay_event"],
            "viewer": ["view_workflowrun", "view_event"],
            "operator": [
                "view_workflowrun",
                "view_event",
                "replay_run",
                "cancel_run",
                "replay_event",
            ],
        }[name]
        for codename in codenames:
            model = Event if codename.endswith("event") else WorkflowRun
            ct = ContentType.objects.get_for_model(model)
            user.user_permissions.add(Permission.objects.get(content_type=ct, codename=codename))
        self.client.force_login(user)
        return self.client

    @staticmethod
    def shown(response: Any) -> str:
        """Status, redirect target and the messages the user was shown."""
        shown = [str(message) for message in get_messages(response.wsgi_request)]
        text = f"{response.status_code} {response.get('Location', '')} {' | '.join(shown)}"
        if response.status_code == 200 and "replay_runs" not in response.content.decode():
            # Django ignores an action the user may not take and shows the plain list.
            text += " the page offers no replay_runs action"
        return text

    @staticmethod
    def bounded_memory(call: Callable[[], Any], limit: int = 4 * 1024 * 1024) -> Any:
        """Run ``call``; fail if it allocates more than ``limit`` bytes at its peak."""
        tracemalloc.start()
        try:
            return call()
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert peak < limit, f"peak allocation {peak} bytes is not bounded"


def counts() -> dict[str, Any]:
    # Lifecycle events the engine emits about a run's end ("workflows/run.failed") are
    # the documented outcome of a failed run, not a half-written input.
    return {
        "events": Event.objects.exclude(name__startswith="workflows/").count(),
        "runs": WorkflowRun.objects.count(),
        "steps": StepResult.objects.count(),
        "workspaces": Workspace.objects.count(),
        "waits": Wait.objects.count(),
        "event keys": EventKey.objects.count(),
        "schedules": list(Schedule.objects.order_by("pk").values()),
        "workflows": sorted(wf.id for wf in registry.all_workflows()),
    }


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gets_a_clear_error_and_leaves_nothing_half_written(case, client):
    env = Env(client)
    Workspace.objects.get_or_create(slug="other")
    if case.setup is not None:
        case.setup(env)
    if case.entry == "step":
        with testing.no_broker():
            event_id = eventbus.send("cat/step", {"case": case.id})
        run = WorkflowRun.objects.get(event_id=event_id, workflow_id="cat-step")
        before = counts()
        testing.drain(skip_time=True)
        run.refresh_from_db()
        assert run.status == RunStatus.FAILED, (run.status, run.output)
        shown = run.error["message"]
        if case.stored_type is not None:
            assert run.error["type"] == case.stored_type, (case.id, run.error["type"])
        after = counts()
        memos = list(StepResult.objects.filter(run=run))
        assert not Event.objects.filter(source_run_id=run.pk).exists()
        if case.failed_memo:
            assert [m.status for m in memos] == [StepStatus.FAILED]
            before["steps"] += 1
        else:
            assert memos == []
    elif case.entry in ("admin", "http"):
        before = counts()
        shown = case.act(env)
        after = counts()
    else:
        before = counts()
        with pytest.raises(case.error) as caught:
            case.act(env)
        shown = str(caught.value)
        after = counts()
    assert re.search(case.message, shown), f"{case.id}: {shown[:500]!r}"
    assert after == before, f"{case.id} wrote rows: {before} -> {after}"


# --- edge input that is accepted, as documented ------------------------------------------
@pytest.mark.parametrize(
    ("ts", "status"),
    [
        (0, EventStatus.EMITTED),  # 1970: far in the past is simply due
        (1, EventStatus.EMITTED),
        (YEAR_3000_MS, EventStatus.SCHEDULED),  # the year 3000: held in the database
        (validation.MAX_TS_MS, EventStatus.SCHEDULED),  # the last millisecond of 9999
    ],
)
def test_ts_in_the_far_past_or_the_year_3000_is_accepted_as_documented(ts, status):
    with testing.no_broker():
        event_id = eventbus.send("cat/edge", {}, ts=ts)
    event = Event.objects.get(pk=event_id)
    assert (event.status, event.ts) == (status, ts)
    assert bool(event.emitted_at) == (status == EventStatus.EMITTED)


def test_a_payload_just_under_the_limit_and_64_levels_deep_is_accepted():
    payload = {"big": "x" * (LIMIT - 20)}
    with testing.no_broker():
        eventbus.send("cat/edge", payload)
        eventbus.send("cat/edge", nested(64))
    assert Event.objects.count() == 2


def test_a_batch_at_the_documented_limit_is_accepted():
    with testing.no_broker():
        ids = eventbus.send_batch([{"name": "cat/edge", "data": {"i": i}} for i in range(10_000)])
    assert len(set(ids)) == 10_000 == Event.objects.count()


def test_a_generator_of_100000_events_is_refused_in_bounded_memory():
    events = ({"name": "cat/x", "data": {"i": i}} for i in range(100_000))
    with pytest.raises(eventbus.EventError, match="at most 10000 events"):
        Env.bounded_memory(lambda: eventbus.send_batch(events))
    assert Event.objects.count() == 0


# --- configuration the broker could not honour -----------------------------------------------
def test_system_check_refuses_server_side_binding_on_postgresql(monkeypatch):
    from django.conf import settings

    from workflows import checks

    other = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "x",
        "OPTIONS": {"server_side_binding": True},
    }
    monkeypatch.setitem(settings.DATABASES, "other", other)  # read by the check only
    (message,) = [m for m in checks.check_settings() if m.id == "workflows.E004"]
    assert "DATABASES['other']['OPTIONS']['server_side_binding'] is True" in message.msg


@pytest.mark.parametrize("value", [-0.1, "1", True, float("nan")])
def test_system_check_refuses_a_hand_on_budget_that_is_not_a_number_of_0_or_more(value, settings):
    from workflows import checks

    settings.WORKFLOWS = {**getattr(settings, "WORKFLOWS", {}), "HAND_ON_SECONDS": value}
    (message,) = [m for m in checks.check_settings() if m.id == "workflows.E006"]
    assert f"WORKFLOWS['HAND_ON_SECONDS'] is {value!r}; it must be 0 or more" in message.msg


def test_system_check_takes_a_hand_on_budget_of_0(settings):
    from workflows import checks

    settings.WORKFLOWS = {**getattr(settings, "WORKFLOWS", {}), "HAND_ON_SECONDS": 0}
    assert not [m for m in checks.check_settings() if m.id == "workflows.E006"]


@pytest.mark.parametrize("value", ["yes", 1, 0.0])
def test_system_check_refuses_prepared_statements_other_than_none_true_or_false(value, settings):
    from workflows import checks

    settings.WORKFLOWS = {**getattr(settings, "WORKFLOWS", {}), "PREPARED_STATEMENTS": value}
    (message,) = [m for m in checks.check_settings() if m.id == "workflows.E005"]
    assert f"WORKFLOWS['PREPARED_STATEMENTS'] is {value!r}" in message.msg
    assert "None" in message.msg and "True or False" in message.msg


@pytest.mark.parametrize(
    ("horizon", "interval", "expected"),
    [(0.5, 0.25, ["workflows.W004"]), (1.0, 0.5, ["workflows.W004"]), (10, 0.25, [])],
)
def test_system_check_warns_when_the_eta_horizon_is_too_short_for_the_dispatcher(
    settings, horizon, interval, expected
):
    from workflows import checks

    settings.CELERY_BROKER_URL = "filesystem://"
    settings.WORKFLOWS = {"ETA_HORIZON_SECONDS": horizon, "DISPATCH_INTERVAL_SECONDS": interval}
    messages = checks.check_settings()
    assert [m.id for m in messages] == expected
    for message in messages:
        assert f"ETA_HORIZON_SECONDS'] ({horizon:g}s) is not above twice" in message.msg


@pytest.mark.parametrize(
    ("broker", "options", "horizon", "expected"),
    [
        ("redis://127.0.0.1:6379/0", {"visibility_timeout": 20}, 30, ["workflows.W001"]),
        ("redis://127.0.0.1:6379/0", {"visibility_timeout": 30}, 30, ["workflows.W001"]),
        ("rediss://127.0.0.1:6380/0", {}, 3600, ["workflows.W001"]),  # kombu's 1 h default
        ("redis://127.0.0.1:6379/0", {}, 3599, []),
        ("amqp://guest:guest@127.0.0.1:5672//", {}, 1800, ["workflows.W002"]),
        ("amqps://guest:guest@127.0.0.1:5671//", {}, 7200, ["workflows.W002"]),
        ("pyamqp://guest@127.0.0.1//", {}, 1800, ["workflows.W002"]),
        (["amqp://a//", "amqp://b//"], {}, 1800, ["workflows.W002"]),  # failover list
        ("AMQP://guest@127.0.0.1//", {}, 1800, ["workflows.W002"]),
        ("amqp://guest:guest@127.0.0.1:5672//", {}, 1799, []),
        ("filesystem://", {}, 86400, []),
    ],
)
def test_system_check_warns_when_the_eta_horizon_reaches_the_brokers_limit(
    settings, broker, options, horizon, expected
):
    from workflows import checks

    settings.CELERY_BROKER_URL = broker
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = options
    settings.WORKFLOWS = {"ETA_HORIZON_SECONDS": horizon}
    messages = checks.check_settings()
    assert [m.id for m in messages] == expected
    for message in messages:
        assert "ETA_HORIZON_SECONDS" in message.msg and f"({horizon:g}s)" in message.msg
