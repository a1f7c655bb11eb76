"""The chaos suite: a mixed load on real workers while a controller breaks things.

Several ``celery worker`` processes and one standalone dispatcher run at least 500 runs
of workflows that use ``run``, ``send_event`` (now and deferred), ``sleep`` and, where
the engine has them, ``invoke`` and ``wait_for_event``. Meanwhile, for a bounded time,
the controller repeatedly:

- kills a random worker with SIGKILL and starts a new one;
- kills the dispatcher with SIGKILL and restarts it;
- flushes the broker's Redis database (every queued message lost);
- kills the Redis server and starts it again, empty;
- terminates workers' database connections (``pg_terminate_backend``), mid-step.

Then, with faults stopped, every run must reach a terminal state within a bounded time,
and the checks below must find nothing lost and nothing done twice. A summary with
figures is printed (and written to ``var/chaos-summary.json``).

Runs on PostgreSQL + Redis only: ``scripts/test -m chaos tests/chaos``. Longer:
``CHAOS_SECONDS=600`` or ``--chaos-seconds 600``.
"""

import json
import os
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection, connections
from django.db.models import Count, F, Q
from django.utils import timezone

import eventbus
from eventbus.models import Event, EventStatus
from tests.chaos.workflows import CHAOS_LIMIT, EMISSION_LOG_ENV
from tests.conftest import ROOT, Dispatcher, RedisServer, Worker, broker_url
from tests.testapp.models import EmissionLog, LedgerEntry, Span, most_at_once
from workflows import lifecycle, registry, schedules
from workflows.models import (
    TERMINAL_STATUSES,
    BatchEvent,
    GateState,
    RunStatus,
    StepKind,
    StepResult,
    WorkflowRun,
)

pytestmark = [pytest.mark.chaos, pytest.mark.worker]

#: Event names of the engine's lifecycle.
RUN_FINISHED = lifecycle.RUN_FINISHED
INVOKED = lifecycle.INVOKED

WORKERS = 3
CONCURRENCY = 2
DEFAULT_SECONDS = 60.0
#: Runs must all be terminal this long after the faults stop (generous: shared CI cores).
QUIESCENCE_TIMEOUT = 240.0
FAULT_KINDS = ("kill_worker", "kill_dispatcher", "flush_broker", "restart_redis", "cut_db")


@dataclass
class Fault:
    """One injected fault and the runs that were active at that moment."""

    kind: str
    at: float
    active: list = field(default_factory=list)
    detail: str = ""


def chaos_seconds(config: pytest.Config) -> float:
    option = config.getoption("--chaos-seconds")
    return float(option if option is not None else os.environ.get("CHAOS_SECONDS", DEFAULT_SECONDS))


def skip_unless_postgres_and_redis() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the chaos suite needs PostgreSQL (DATABASE_URL=postgresql://…)")
    if not str(settings.CELERY_BROKER_URL).startswith("redis"):
        pytest.skip("the chaos suite needs Redis as the broker (CELERY_BROKER_URL=redis://…)")
    if os.system("command -v redis-server >/dev/null 2>&1") != 0:
        pytest.skip("the chaos suite starts its own redis-server, which is not installed")


class Cluster:
    """Workers, the dispatcher and a private Redis, with the faults the controller injects."""

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        env = {
            "DJANGO_SETTINGS_MODULE": "tests.chaos.settings",
            "CELERY_BROKER_URL": redis.url,
            EMISSION_LOG_ENV: "1",
            "WORKFLOWS_LOG_LEVEL": "WARNING",
        }
        self.worker_env = {**env, "CHAOS_ROLE": "chaos-worker"}
        self.dispatcher_env = {**env, "CHAOS_ROLE": "chaos-dispatcher"}
        self.workers: list[Worker] = []
        self.retired: list[Worker] = []
        self.dispatcher: Dispatcher | None = None
        self.retired_dispatchers: list[Dispatcher] = []
        #: Processes that exited on their own and were started again, as a process
        #: supervisor (systemd, Kubernetes) would (e.g. kombu can crash a worker while it
        #: reconnects to a Redis that restarted).
        self.revived = 0

    def start(self) -> None:
        for _ in range(WORKERS):
            self.workers.append(self._worker())
        self.dispatcher = Dispatcher(env=self.dispatcher_env).start()

    def _worker(self) -> Worker:
        return Worker(concurrency=CONCURRENCY, env=self.worker_env).start()

    # --- faults ---------------------------------------------------------------------
    def kill_worker(self) -> str:
        victim = random.choice(self.workers)
        victim.kill()
        self.workers.remove(victim)
        self.retired.append(victim)
        self.workers.append(self._worker())
        return f"pid {victim.process.pid}"

    def kill_dispatcher(self) -> str:
        old = self.dispatcher
        old.kill()
        self.retired_dispatchers.append(old)
        time.sleep(random.uniform(0.5, 2.5))  # nothing rings or emits meanwhile
        self.dispatcher = Dispatcher(env=self.dispatcher_env).start()
        return f"pid {old.process.pid}"

    def flush_broker(self) -> str:
        client = self.redis.client()
        queued = client.llen(os.environ["CELERY_TASK_DEFAULT_QUEUE"])
        unacked = client.hlen("unacked")  # delivered to a worker, not yet acknowledged
        client.flushdb()
        return f"{queued} queued and {unacked} unacknowledged message(s) dropped"

    def restart_redis(self) -> str:
        self.redis.kill()
        time.sleep(random.uniform(0.5, 2.0))
        self.redis.start()
        return "restarted empty"

    def cut_db(self) -> str:
        # Step bodies take milliseconds: watch for two seconds and terminate every worker
        # connection caught inside a query or a transaction, i.e. mid-step.
        busy = 0
        deadline = time.monotonic() + 2.0
        with connection.cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND application_name = 'chaos-worker' "
                    "AND state IN ('active', 'idle in transaction')"
                )
                busy += len(cursor.fetchall())
                time.sleep(0.02)
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name = 'chaos-worker'"
            )
            idle = len(cursor.fetchall())
        return f"{busy} busy and {idle} idle worker connection(s) terminated"

    def supervise(self) -> None:
        """Start again any worker or dispatcher whose process has exited."""
        for worker in list(self.workers):
            if worker.process is not None and worker.process.poll() is not None:
                self.workers.remove(worker)
                self.retired.append(worker)
                self.workers.append(self._worker())
                self.revived += 1
        old = self.dispatcher
        if old is not None and old.process is not None and old.process.poll() is not None:
            self.retired_dispatchers.append(old)
            self.dispatcher = Dispatcher(env=self.dispatcher_env).start()
            self.revived += 1

    # --- end ------------------------------------------------------------------------
    def all_logs(self) -> list:
        return [*self.workers, *self.retired, self.dispatcher, *self.retired_dispatchers]

    def shutdown(self) -> None:
        for process in [*self.workers, self.dispatcher]:
            if process is not None:
                process.kill()
        for process in self.all_logs():
            if process is not None:
                process.log.unlink(missing_ok=True)


class Loader(threading.Thread):
    """Sends the trigger events, spread evenly over the fault window."""

    def __init__(self, orders: int, seconds: float) -> None:
        super().__init__(name="chaos-loader", daemon=True)
        self.orders = orders
        self.seconds = seconds
        self.sent: list[str] = []
        self.rows: list[str] = []  # chaos-batch: every one in exactly one batch
        self.bursts: dict[int, list[str]] = {}  # chaos-debounce: one run per burst
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            started = time.monotonic()
            for number in range(self.orders):
                # Evenly spread; a send never waits for the broker to be healthy.
                target = started + self.seconds * number / self.orders
                time.sleep(max(0.0, target - time.monotonic()))
                self.sent.append(eventbus.send("chaos/order", self.data(number)))
                self.send_admission(number)
                eventbus.send("chaosflow/job", {"k": number % 3})
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            connections.close_all()

    def send_admission(self, number: int) -> None:
        """A row for the batches with every order; a burst of 3 for the debounce every 5th."""
        self.rows.append(eventbus.send("chaosadm/row", {"order": number}))
        if number % 5 == 0:
            burst = number // 5
            self.bursts[burst] = [
                eventbus.send("chaosadm/typed", {"burst": burst, "n": n}) for n in range(3)
            ]

    @staticmethod
    def data(number: int) -> dict:
        return {
            "order": number,
            "later_ts": int(time.time() * 1000) + random.randint(1500, 9000),
            "sleep": random.choice([0.3, 1.0, 2.5]),
            "step_seconds": random.choice([0.0, 0.05, 0.2]),
            "invoke": number % 2 == 0,
            "wait": number % 3 == 0,
        }


def inject_faults(cluster: Cluster, seconds: float) -> list[Fault]:
    """Inject faults of every kind in shuffled rounds until ``seconds`` have passed."""
    faults: list[Fault] = []
    deadline = time.monotonic() + seconds
    pending: list[str] = []
    while True:
        time.sleep(random.uniform(2.0, 4.5))
        cluster.supervise()
        if time.monotonic() > deadline:
            return faults
        if not pending:
            pending = random.sample(FAULT_KINDS, len(FAULT_KINDS))
        kind = pending.pop()
        now = timezone.now()
        active = list(
            WorkflowRun.objects.filter(
                Q(status=RunStatus.RUNNING)
                | Q(status=RunStatus.QUEUED) & (Q(wake_at__isnull=True) | Q(wake_at__lte=now))
            ).values_list("pk", flat=True)
        )
        fault = Fault(kind, time.time(), active)
        fault.detail = getattr(cluster, kind)()
        faults.append(fault)


def recovery_delays(faults: list[Fault]) -> list[float]:
    """Per (fault, run active at it): seconds until that run visibly moved again.

    "Moved" is the first of: a step started, updated or finished, or the run finished,
    after the fault. An upper bound on how long the fault held the run up.
    """
    moments: dict = defaultdict(list)
    for run_id, *times in StepResult.objects.values_list(
        "run_id", "started_at", "updated_at", "finished_at"
    ):
        moments[run_id].extend(t.timestamp() for t in times if t is not None)
    for run_id, finished in WorkflowRun.objects.values_list("pk", "finished_at"):
        if finished is not None:
            moments[run_id].append(finished.timestamp())
    delays = []
    for fault in faults:
        for run_id in fault.active:
            later = [t for t in moments[run_id] if t > fault.at]
            if later:
                delays.append(min(later) - fault.at)
    return delays


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def check_invariants(loader: Loader) -> dict:
    """Everything the chaos must not have broken; returns the problems found, by kind."""
    problems: dict[str, list[str]] = defaultdict(list)
    runs = list(WorkflowRun.objects.all())
    by_id = {run.pk: run for run in runs}

    # No run lost or stuck: every run terminal, completed; every order sent has its run.
    for run in runs:
        if run.status not in TERMINAL_STATUSES:
            problems["stuck runs"].append(f"{run.workflow_id} {run.pk} {run.status}")
        elif run.status != RunStatus.COMPLETED:
            message = (run.error or {}).get("message", "")[:200]
            problems["failed runs"].append(f"{run.workflow_id} {run.pk}: {message}")
    order_runs = {
        str(event_id)
        for event_id in WorkflowRun.objects.filter(workflow_id="chaos-order").values_list(
            "event_id", flat=True
        )
    }
    for event_id in loader.sent:
        if event_id not in order_runs:
            problems["lost runs"].append(f"no chaos-order run for event {event_id}")

    # No step outcome recorded twice (the unique key says so; checked, not assumed).
    for row in StepResult.objects.values("run_id", "key").annotate(n=Count("id")).filter(n__gt=1):
        problems["duplicate memos"].append(str(row))

    # No step body that committed its ledger write and its memo executed again; each
    # completed run-step has at least one ledger row (its body did run).
    ledger: dict = defaultdict(list)
    for run_id, step, created in LedgerEntry.objects.values_list("run_id", "step", "created_at"):
        ledger[(run_id, step)].append(created)
    reruns_before_memo = 0
    for step in StepResult.objects.filter(kind=StepKind.RUN, status="completed"):
        rows = ledger.get((str(step.run_id), step.step_id), [])
        if not rows:
            problems["memos without a body execution"].append(f"{step.run_id} {step.step_id}")
        later = [t for t in rows if t > step.finished_at]
        if later:
            problems["bodies re-executed after their memo"].append(
                f"run {step.run_id} step {step.step_id}: {len(later)} time(s)"
            )
        reruns_before_memo += max(0, len(rows) - 1 - len(later))

    # Every event emitted exactly once, never early; every send_event memo has its events.
    events = list(Event.objects.all())
    deliveries = Counter(EmissionLog.objects.values_list("event_id", flat=True))
    invoked = Counter(
        WorkflowRun.objects.filter(parent__isnull=False).values_list("event_id", flat=True)
    )
    finished = Counter(
        str(event.data.get("run_id")) for event in events if event.name == RUN_FINISHED
    )
    for event in events:
        if event.name == "workflows/cron":  # a slot's trigger: checked below
            continue
        if event.name == INVOKED:  # a child's trigger: stored, never broadcast
            if invoked.get(event.pk, 0) != 1:
                kind = "lost invoked runs" if not invoked.get(event.pk) else "duplicate triggers"
                problems[kind].append(f"{invoked.get(event.pk, 0)} runs for {event.pk}")
            continue
        if event.status != EventStatus.EMITTED:
            problems["events never emitted"].append(f"{event.name} {event.pk} ts={event.ts}")
            continue
        count = deliveries.get(event.pk, 0)
        if count == 0 and event.name == RUN_FINISHED:
            pass  # a quiet end delivers it to no subscriber: counted per run below
        elif count == 0 and event.source_run_id is None and event.emitted_at == event.created_at:
            pass  # sent alone and stored with its runs (start_quietly): counted per run below
        elif count == 0:
            problems["events emitted without delivery"].append(f"{event.name} {event.pk}")
        elif count > 1:
            problems["events delivered twice"].append(f"{event.name} {event.pk}: {count}")
        if int(event.emitted_at.timestamp() * 1000) < event.ts:
            problems["deferred events emitted early"].append(
                f"{event.name} {event.pk}: {event.emitted_at.isoformat()} < ts {event.ts}"
            )
    early = EmissionLog.objects.filter(delivered_ms__lt=F("ts")).count()
    if early:
        problems["deferred events emitted early"].append(f"{early} delivery(ies) before ts")
    per_memo = Counter(
        Event.objects.filter(source_step_id__isnull=False).values_list("source_step_id", flat=True)
    )
    for memo in StepResult.objects.filter(kind=StepKind.SEND_EVENT):
        if per_memo.get(memo.pk, 0) != 1:
            problems["send_event memos without exactly one event"].append(
                f"run {memo.run_id} step {memo.step_id}: {per_memo.get(memo.pk, 0)}"
            )

    # Exactly one announcement of the end of each run.
    for run in runs:
        count = finished.get(str(run.pk), 0)
        if run.status in TERMINAL_STATUSES and count != 1:
            kind = "lost run.finished events" if not count else "duplicate run.finished events"
            problems[kind].append(f"{run.workflow_id} {run.pk}: {count}")

    # A wait_for_event that timed out lost its acknowledgement, unless that event was
    # emitted before the wait began (its run was held up by a fault): only events emitted
    # since the wait began count, as documented.
    waits = Counter()
    began = {
        step.run_id: step.started_at
        for step in StepResult.objects.filter(kind=StepKind.WAIT_FOR_EVENT, step_id="ack")
    }
    acks = {
        event.data.get("order"): event
        for event in events
        if event.name == "chaos/ack" and event.status == EventStatus.EMITTED
    }
    for run in runs:
        if run.workflow_id != "chaos-order" or not run.output or "acked" not in run.output:
            continue
        if run.output["acked"]:
            waits["matched"] += 1
            continue
        ack = acks.get(run.output["order"])
        if ack is None or run.pk not in began:
            problems["waits that missed their event"].append(f"run {run.pk}: no ack or no wait")
        elif ack.emitted_at >= began[run.pk]:
            problems["waits that missed their event"].append(
                f"run {run.pk}: ack emitted {ack.emitted_at.isoformat()}, after the wait"
                f" began {began[run.pk].isoformat()}, yet the wait timed out"
            )
        else:
            waits["timed out (ack emitted before the wait began)"] += 1
    # The load's coordination steps really ran: nothing here may be silently skipped.
    if not waits["matched"]:
        problems["waits that missed their event"].append("no wait_for_event was ever matched")
    if not invoked:
        problems["lost invoked runs"].append("no step.invoke started a child run")

    # Every subscribed workflow triggered exactly once per event.
    triggered = Counter(
        WorkflowRun.objects.filter(replay_of__isnull=True, parent__isnull=True).values_list(
            "event_id", "workflow_id"
        )
    )
    for event in events:
        if event.status != EventStatus.EMITTED or not event.name.startswith("chaos/"):
            continue
        for wf in registry.subscribers(event.name):
            count = triggered.get((event.pk, wf.id), 0)
            if count != 1:
                kind = "lost triggers" if count == 0 else "duplicate triggers"
                problems[kind].append(f"{wf.id} x{count} for {event.name} {event.pk}")
    for (event_id, workflow_id), count in triggered.items():
        if count > 1:
            problems["duplicate triggers"].append(f"{workflow_id} x{count} for {event_id}")

    # The schedule: one run per fired slot, none before its slot, each slot fired once.
    slots: Counter = Counter()
    for event in Event.objects.filter(name="workflows/cron", data__schedule_id=SCHEDULE_ID):
        slots[event.idempotency_key] += 1
        slot_runs = [r for r in event.runs.all() if not r.is_replay]
        if len(slot_runs) != 1:
            kind = "lost slot runs" if not slot_runs else "duplicate slot runs"
            problems[kind].append(f"{event.idempotency_key}: {len(slot_runs)} run(s)")
        if int(event.created_at.timestamp() * 1000) < event.data["scheduled_at"]:
            problems["slots fired early"].append(event.idempotency_key)
    problems["duplicate slot runs"].extend(k for k, n in slots.items() if n > 1)
    check_admission(loader, problems)
    check_limits(problems)
    if not slots:
        problems["lost slot runs"].append(f"schedule {SCHEDULE_ID} never fired")
    return {
        "problems": {kind: rows for kind, rows in problems.items() if rows},
        "slots": len(slots),
        "runs": len(runs),
        "events": len(events),
        "by_workflow": dict(Counter(run.workflow_id for run in by_id.values())),
        "statuses": dict(Counter(run.status for run in runs)),
        "reruns_before_memo": reruns_before_memo,
        "retried_steps": StepResult.objects.filter(attempt__gt=0).count(),
        "waits": dict(waits),
    }


def check_limits(problems: dict) -> None:
    """No key of the concurrency-limited workflow ever had more than its limit at once."""
    spans = defaultdict(list)
    for row in Span.objects.filter(label__startswith="chaos-limited:"):
        spans[row.label].append(row)
    if not spans:
        problems["limit never exercised"].append("chaos-limited recorded no execution")
    for label, rows in sorted(spans.items()):
        most = most_at_once(rows)
        if most > CHAOS_LIMIT:
            problems["concurrency limit exceeded"].append(f"{label}: {most} at once")


def check_admission(loader: Loader, problems: dict) -> None:
    """Every row in exactly one batch, each batch one run with all of its events; one
    debounce run per burst, triggered by the burst's last event."""
    members = defaultdict(list)
    for batch_id, event_id in (
        BatchEvent.objects.filter(workflow_id="chaos-batch")
        .order_by("batch_id", "position")
        .values_list("batch_id", "event_id")
    ):
        members[batch_id].append(str(event_id))
    placed = Counter(event_id for events in members.values() for event_id in events)
    for event_id in loader.rows:
        if placed.get(event_id, 0) != 1:
            kind = "events in no batch" if not placed.get(event_id) else "events in two batches"
            problems[kind].append(f"{event_id}: in {placed.get(event_id, 0)} batch(es)")
    batch_runs = {
        str(run.event_id): run
        for run in WorkflowRun.objects.filter(workflow_id="chaos-batch", replay_of__isnull=True)
    }
    for batch_id, events in members.items():
        run = batch_runs.get(events[0])
        if run is None:
            problems["lost batch runs"].append(f"batch {batch_id} of {len(events)}: no run")
        elif (run.output or {}).get("events") != events or len(events) > 7:
            problems["batch runs with other events"].append(f"batch {batch_id} run {run.pk}")
    if len(batch_runs) != len(members):
        problems["duplicate batch runs"].append(f"{len(batch_runs)} runs, {len(members)} batches")
    debounce_runs = Counter(
        str(event_id)
        for event_id in WorkflowRun.objects.filter(
            workflow_id="chaos-debounce", replay_of__isnull=True
        ).values_list("event_id", flat=True)
    )
    for burst, events in loader.bursts.items():
        got = [debounce_runs.get(event_id, 0) for event_id in events]
        if got != [0, 0, 1]:
            kind = "lost debounce runs" if sum(got) == 0 else "duplicate debounce runs"
            problems[kind].append(f"burst {burst}: runs per event {got}")


DUPLICATE_KINDS = {
    "events in two batches",
    "duplicate batch runs",
    "batch runs with other events",
    "duplicate debounce runs",
    "duplicate memos",
    "bodies re-executed after their memo",
    "events delivered twice",
    "duplicate triggers",
    "duplicate run.finished events",
    "duplicate slot runs",
    "slots fired early",
}
LOSS_KINDS = {
    "events in no batch",
    "lost batch runs",
    "lost debounce runs",
    "stuck runs",
    "lost runs",
    "events never emitted",
    "events emitted without delivery",
    "send_event memos without exactly one event",
    "lost triggers",
    "memos without a body execution",
    "lost invoked runs",
    "lost run.finished events",
    "lost slot runs",
    "waits that missed their event",
}
#: A database schedule every 2 s for the length of the faults (``chaos-tick``).
SCHEDULE_ID = "chaos-every-2s"


def test_chaos_loses_nothing_and_does_nothing_twice(transactional_db, request, capsys, monkeypatch):
    skip_unless_postgres_and_redis()
    seconds = chaos_seconds(request.config)
    # At least 130 orders: with their children, audits and
    # invoked and acknowledged runs, that is well over 500 runs.
    orders = max(130, int(seconds * 2.2))
    monkeypatch.setenv(EMISSION_LOG_ENV, "1")
    redis = RedisServer().start()
    cluster = Cluster(redis)
    started = time.monotonic()
    try:
        with broker_url(redis.url):
            schedules.create(SCHEDULE_ID, workflow="chaos-tick", cron="*/2 * * * * *")
            cluster.start()
            loader = Loader(orders, seconds)
            loader.start()
            faults = inject_faults(cluster, seconds)
            schedules.pause(SCHEDULE_ID)  # no new slot once the faults are over
            loader.join(timeout=120)
            assert not loader.is_alive(), "the loader did not finish sending"
            assert loader.error is None, f"the loader failed: {loader.error!r}"
            faults_over = time.monotonic()

            def quiet() -> bool:
                active = WorkflowRun.objects.exclude(status__in=TERMINAL_STATUSES).exists()
                scheduled = Event.objects.filter(status=EventStatus.SCHEDULED).exists()
                collecting = GateState.objects.filter(due_at__isnull=False).exists()
                return not active and not scheduled and not collecting

            deadline = time.monotonic() + QUIESCENCE_TIMEOUT
            while not quiet() and time.monotonic() < deadline:
                cluster.supervise()
                time.sleep(0.5)
            quiescence = time.monotonic() - faults_over
            settled = quiet()
        report = check_invariants(loader)
        delays = recovery_delays(faults)
        summary = summarise(report, faults, delays, seconds, quiescence, settled, started)
        with capsys.disabled():
            print("\n" + summary["text"])
            print(f"  supervisor: {cluster.revived} process(es) restarted after exiting")
        out = Path(os.environ.get("VAR_DIR", ROOT / "var"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "chaos-summary.json").write_text(json.dumps(summary["figures"], indent=2))
        problems = report["problems"]
        if problems or not settled:
            tails = "\n".join(
                f"--- {type(p).__name__} log\n{p.tail(30)}" for p in cluster.all_logs()[:6]
            )
            details = json.dumps({k: v[:10] for k, v in problems.items()}, indent=1)
            pytest.fail(f"chaos found problems (settled={settled}):\n{details}\n{tails}")
        assert report["runs"] >= 500
    finally:
        cluster.shutdown()
        redis.kill()


def summarise(report, faults, delays, seconds, quiescence, settled, started) -> dict:
    problems = report["problems"]
    duplicates = sum(len(v) for k, v in problems.items() if k in DUPLICATE_KINDS)
    losses = sum(len(v) for k, v in problems.items() if k in LOSS_KINDS)
    by_kind = Counter(fault.kind for fault in faults)
    figures = {
        "fault_seconds": seconds,
        "workers": WORKERS,
        "concurrency": CONCURRENCY,
        "runs": report["runs"],
        "runs_by_workflow": report["by_workflow"],
        "statuses": report["statuses"],
        "events": report["events"],
        "faults": dict(by_kind),
        "recovery_seconds": {
            "pairs": len(delays),
            "p50": round(percentile(delays, 0.5), 2),
            "p99": round(percentile(delays, 0.99), 2),
            "max": round(max(delays, default=0.0), 2),
        },
        "quiescence_seconds": round(quiescence, 1),
        "settled": settled,
        "reruns_before_memo": report["reruns_before_memo"],
        "retried_steps": report["retried_steps"],
        "waits": report["waits"],
        "duplicates": duplicates,
        "losses": losses,
        "problems": {k: len(v) for k, v in problems.items()},
        "total_seconds": round(time.monotonic() - started, 1),
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }
    recovery = figures["recovery_seconds"]
    lines = [
        "=" * 78,
        f"CHAOS SUMMARY: PostgreSQL + Redis, {WORKERS} workers x {CONCURRENCY}, "
        f"1 dispatcher, faults for {seconds:g}s",
        f"  runs:        {report['runs']} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(report["by_workflow"].items()))
        + ")",
        "  statuses:    " + ", ".join(f"{k} {v}" for k, v in sorted(report["statuses"].items())),
        f"  events:      {report['events']}; wait_for_event: "
        + (", ".join(f"{k} {v}" for k, v in sorted(report["waits"].items())) or "not used"),
        f"  faults:      {len(faults)} ("
        + ", ".join(f"{kind} {by_kind.get(kind, 0)}" for kind in FAULT_KINDS)
        + ")",
    ]
    for fault in faults:
        lines.append(
            f"    t+{fault.at - faults[0].at:5.1f}s {fault.kind:<16} {fault.detail} "
            f"({len(fault.active)} runs active)"
        )
    lines += [
        f"  recovery:    max {recovery['max']}s, p99 {recovery['p99']}s, p50 "
        f"{recovery['p50']}s (until each run active at a fault moved again; "
        f"{recovery['pairs']} fault/run pairs)",
        f"  quiescence:  every run terminal {quiescence:.1f}s after the faults stopped"
        if settled
        else f"  quiescence:  NOT reached within {QUIESCENCE_TIMEOUT:g}s",
        "  step bodies run again before their memo was stored (at-least-once, allowed): "
        f"{report['reruns_before_memo']}",
        f"  steps retried (a try failed, e.g. its connection was cut): {report['retried_steps']}",
        f"  duplicates:  {duplicates}",
        f"  losses:      {losses}",
    ]
    for kind, rows in problems.items():
        lines.append(f"  PROBLEM {kind}: {len(rows)}, e.g. {rows[:3]}")
    lines.append("=" * 78)
    return {"text": "\n".join(lines), "figures": figures}
