"""The three contenders, each able to run the workloads it has a peer for.

A peer starts its own workers for each workload (``workers()``), so every workload
begins from idle processes and the memory figures are comparable. Every method returns
plain figures in seconds or bytes; :mod:`bench.__main__` turns them into the report.
"""

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from bench import config, marks, procs, stats

READY_TIMEOUT = 120.0


def channel(prefix: str) -> str:
    """A fresh notification channel name."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wait_marks(label: str, count: int, timeout: float) -> bool:
    """Wait until ``count`` distinct keys of ``label`` have a row."""

    def done() -> bool:
        row = (
            marks.connection()
            .execute("SELECT count(DISTINCT key) FROM bench_mark WHERE label = %s", (label,))
            .fetchone()
        )
        return row[0] >= count

    return procs.wait_until(done, timeout, interval=0.05)


def wait_marks_or_stall(label: str, count: int, stall: float, cap: float) -> bool:
    """Wait until ``count`` keys of ``label`` have a row, while rows keep arriving.

    Late work is not missed work: give up only when no new row arrived for ``stall``
    seconds (or after ``cap`` seconds in all).
    """
    deadline = time.monotonic() + cap
    seen, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        got = (
            marks.connection()
            .execute("SELECT count(DISTINCT key) FROM bench_mark WHERE label = %s", (label,))
            .fetchone()[0]
        )
        if got >= count:
            return True
        if got != seen:
            seen, last_change = got, time.monotonic()
        elif time.monotonic() - last_change > stall:
            return False
        time.sleep(0.2)
    return False


def read_marks(label: str) -> list[tuple[int, float]]:
    """Every (key, time) row of ``label``."""
    return (
        marks.connection()
        .execute("SELECT key, t FROM bench_mark WHERE label = %s ORDER BY t", (label,))
        .fetchall()
    )


def deferred_figures(label: str, due: dict[int, float]) -> dict:
    """Lateness, early runs, duplicates and misses of the deferred keys ``due`` (key: s)."""
    rows = read_marks(label)
    first: dict[int, float] = {}
    for key, t in rows:
        first.setdefault(key, t)
    lateness = [first[k] - due[k] for k in first if k in due]
    return {
        "lateness": stats.latency(lateness),
        "early": sum(1 for x in lateness if x < 0),
        "duplicates": len(rows) - len(first),
        "misses": len(set(due) - set(first)),
    }


def schedule(count: int, spread_s: float) -> tuple[float, list[float]]:
    """Due times of ``count`` deferred items over ``spread_s`` seconds, after a lead.

    The lead leaves time to hand every item over before the first one is due.
    """
    lead = 2.0 + count / 2500
    start = time.time() + lead
    return lead, [start + spread_s * k / count for k in range(count)]


class Ours:
    """This project: a Celery worker with ``-c workers`` prefork processes.

    As shipped, a worker's claim of a run and the transaction that ends it commit with
    ``synchronous_commit`` off (see docs/guarantees.md); :class:`OursSync` flushes them.
    """

    name = "ours"
    #: Extra environment of the worker processes.
    worker_env: dict[str, str] = {}

    def __init__(self) -> None:
        from django.db import connection

        from eventbus import send, send_batch
        from workflows.models import RunStatus, WorkflowRun

        self.connection = connection
        self.send, self.send_batch = send, send_batch
        self.RunStatus, self.WorkflowRun = RunStatus, WorkflowRun
        self.procs: list[subprocess.Popen] = []

    @contextlib.contextmanager
    def workers(self, count: int) -> Iterator[None]:
        """Run ``count`` worker processes (one prefork worker) while inside."""
        proc = procs.celery_worker(
            "settings",
            config.WF_QUEUE,
            count,
            DJANGO_SETTINGS_MODULE="bench.settings",
            **self.worker_env,
        )
        self.procs = [proc]
        try:
            ch = channel("ours-ready")
            self.send("bench/latency", {"channel": ch})
            marks.wait(ch, READY_TIMEOUT)
            yield
        finally:
            procs.stop(proc)
            self.procs = []

    def _wait_run(self, event_id: str, timeout: float = 300.0):
        runs = self.WorkflowRun.objects.filter(event_id=event_id)
        finished = ("completed", "failed", "cancelled")
        if not procs.wait_until(
            lambda: runs.filter(status__in=finished).exists(), timeout, interval=0.02
        ):
            raise TimeoutError(f"the run of event {event_id} did not finish in {timeout}s")
        run = runs.get()
        if run.status != self.RunStatus.COMPLETED:
            raise RuntimeError(f"run {run.pk} ended {run.status}: {run.error}")
        return run

    def w1(self, n: int, reps: int) -> list[float]:
        """Seconds per run of ``n`` steps, from ``send`` to the end of the run.

        Timed from the client, as the peers are: the send, the bell, the claim, the
        steps and the run's end all count (the end is the worker's ``finished_at``, on
        the same machine's clock).
        """
        self._wait_run(self.send("bench/steps.requested", {"n": 5}))  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.time()
            run = self._wait_run(self.send("bench/steps.requested", {"n": n}))
            times.append(run.finished_at.timestamp() - t0)
        return times

    def w2(self, n: int, label: str) -> float:
        """Seconds from sending the fan-out trigger to the last leaf's row."""
        t0 = time.time()
        self.send("bench/fanout.requested", {"label": label, "n": n})
        if not wait_marks(label, n, timeout=300):
            raise TimeoutError(f"fan-out {label}: not all {n} leaves ran")
        return max(t for _, t in read_marks(label)) - t0

    def w3(self, count: int) -> list[float]:
        """Seconds from ``send`` to the first step's start, ``count`` times in a row."""
        ch = channel("ours-w3")
        samples = []
        for _ in range(count):
            t0 = time.time()
            self.send("bench/latency", {"channel": ch})
            samples.append(marks.wait(ch) - t0)
        return samples

    def w4(self, count: int, spread_s: float, label: str) -> tuple[dict[int, float], float]:
        """Send ``count`` deferred events; return their due times and the last one."""
        _, due = schedule(count, spread_s)
        for lo in range(0, count, 1000):
            self.send_batch(
                [
                    {
                        "name": "bench/deferred",
                        "data": {"label": label, "k": k},
                        "ts": int(due[k] * 1000),
                    }
                    for k in range(lo, min(lo + 1000, count))
                ]
            )
        return {k: int(due[k] * 1000) / 1000 for k in range(count)}, due[-1]

    def emission_lateness(self) -> dict:
        """How late the dispatcher emitted the deferred events (``emitted_at`` − ``ts``).

        Tells the dispatcher's share of the lateness from the backlog of runs waiting
        for a worker.
        """
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT extract(epoch FROM emitted_at) - ts / 1000.0 FROM eventbus_event "
                "WHERE name = 'bench/deferred' AND emitted_at IS NOT NULL"
            )
            return stats.latency([float(r[0]) for r in cursor.fetchall()])

    def w5(self, count: int) -> None:
        """Park ``count`` runs in a long sleep and wait until they all sleep."""
        for lo in range(0, count, 1000):
            self.send_batch([{"name": "bench/park", "data": {}}] * min(1000, count - lo))
        parked = self.WorkflowRun.objects.filter(workflow_id="bench-park", status="sleeping")
        if not procs.wait_until(lambda: parked.count() >= count, 600, interval=0.25):
            raise TimeoutError(f"not all {count} runs were parked")

    def table_footprint(self) -> dict:
        """Rows and bytes of the engine's tables."""
        tables = ["eventbus_event", "workflows_workflowrun", "workflows_stepresult"]
        with self.connection.cursor() as cursor:
            rows = 0
            size = 0
            for table in tables:
                cursor.execute(f"SELECT count(*), pg_total_relation_size('{table}') FROM {table}")
                r, s = cursor.fetchone()
                rows += r
                size += s
        return {"rows": rows, "bytes": size}


class OursSync(Ours):
    """This project with every commit flushed to disk (``synchronous_commit`` on), as
    DBOS commits: the claim and the end of a run wait for the disk too."""

    name = "ours-sync"
    worker_env = {"BENCH_SYNCHRONOUS_COMMIT": "1"}


class OursPgBouncer(Ours):
    """This project with its workers and the driver connected through PgBouncer in
    transaction pooling mode (``WORKFLOWS_PGBOUNCER=1``): ``BENCH_PGBOUNCER_URL``
    (``postgresql://user@host:port``, pooling onto the bench's server), or one the bench
    starts for the run on a free port (Debian's ``pgbouncer`` package)."""

    name = "ours-pgbouncer"

    def __init__(self) -> None:
        super().__init__()
        import urllib.parse

        url = os.environ.get("BENCH_PGBOUNCER_URL") or self._start_bouncer()
        parts = urllib.parse.urlsplit(url)
        self.bouncer = {"HOST": parts.hostname, "PORT": str(parts.port or 6432)}
        self.worker_env = {
            "DATABASE_URL": f"{url.rstrip('/')}/{config.MAIN_DB}",
            "WORKFLOWS_PGBOUNCER": "1",
        }

    def _start_bouncer(self) -> str:
        import atexit
        import shutil
        import tempfile
        import urllib.parse

        from bench import pgbouncer, ports

        server = urllib.parse.urlsplit(config.PG_SERVER)
        folder = Path(tempfile.mkdtemp(prefix="bench-pgbouncer-"))
        ini, port = pgbouncer.write_config(
            folder,
            host=server.hostname or "127.0.0.1",
            port=server.port or 5432,
            user=server.username or "postgres",
        )
        command = ["pgbouncer", str(ini)]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            shutil.chown(folder, "postgres")
            command[1:1] = ["-u", "postgres"]
        log = open(config.RESULTS_DIR / "workers.log", "ab")  # noqa: SIM115 - the child's
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def stop() -> None:
            proc.terminate()
            proc.wait(timeout=10)
            shutil.rmtree(folder, ignore_errors=True)

        atexit.register(stop)
        if not procs.wait_until(lambda: ports.port_open(port) or proc.poll() is not None, 15):
            raise RuntimeError("pgbouncer did not start (see bench/results/workers.log)")
        if proc.poll() is not None:
            raise RuntimeError("pgbouncer exited at start (see bench/results/workers.log)")
        return f"postgresql://{server.username or 'postgres'}@127.0.0.1:{port}"

    @contextlib.contextmanager
    def workers(self, count: int) -> Iterator[None]:
        """As :meth:`Ours.workers`; the driver's sends and reads go through the bouncer."""
        settings = self.connection.settings_dict  # shared by the driver's threads
        saved = {key: settings.get(key) for key in (*self.bouncer, "DISABLE_SERVER_SIDE_CURSORS")}
        self.connection.close()
        settings.update(self.bouncer, DISABLE_SERVER_SIDE_CURSORS=True)
        try:
            with super().workers(count):
                yield
        finally:
            self.connection.close()
            settings.update(saved)


class CeleryPeer:
    """Plain Celery: a worker with ``-c workers`` prefork processes, not durable."""

    name = "celery"

    def __init__(self) -> None:
        from bench import celery_peer

        self.tasks = celery_peer
        self.procs: list[subprocess.Popen] = []

    @contextlib.contextmanager
    def workers(self, count: int) -> Iterator[None]:
        """Run ``count`` worker processes (one prefork worker) while inside."""
        proc = procs.celery_worker("bench.celery_peer", config.CELERY_QUEUE, count)
        self.procs = [proc]
        try:
            ch = channel("celery-ready")
            self.tasks.notify.apply_async((ch,))
            marks.wait(ch, READY_TIMEOUT)
            yield
        finally:
            procs.stop(proc)
            self.procs = []

    def w1(self, n: int, reps: int) -> list[float]:
        """Seconds per chain of ``n`` tasks (publish to the last task's start)."""
        from celery import chain

        times = []
        for rep in range(reps + 1):
            ch = channel("celery-w1")
            links = [self.tasks.noop.si(i) for i in range(n - 1)]
            flow = chain(*links, self.tasks.notify.si(ch))
            t0 = time.time()
            flow.apply_async()
            elapsed = marks.wait(ch, 300) - t0
            if rep:  # the first is a warm-up
                times.append(elapsed)
        return times

    def w2(self, n: int, label: str) -> float:
        """Seconds from publishing one task that fans out ``n`` one-row tasks to the last row.

        The fan-out happens in a worker, as this project's does in a workflow step.
        """
        t0 = time.time()
        self.tasks.fanout.apply_async((label, n))
        if not wait_marks(label, n, timeout=300):
            raise TimeoutError(f"celery {label}: not all {n} tasks ran")
        return max(t for _, t in read_marks(label)) - t0

    def w3(self, count: int) -> list[float]:
        """Seconds from ``.delay`` to the task's start, ``count`` times in a row."""
        ch = channel("celery-w3")
        samples = []
        for _ in range(count):
            t0 = time.time()
            self.tasks.notify.delay(ch)
            samples.append(marks.wait(ch) - t0)
        return samples

    def w4(self, count: int, spread_s: float, label: str) -> tuple[dict[int, float], float]:
        """Publish ``count`` one-row tasks with an ``eta``; return their due times."""
        _, due = schedule(count, spread_s)
        for k in range(count):
            self.tasks.mark.apply_async((label, k), eta=datetime.fromtimestamp(due[k], tz=UTC))
        return dict(enumerate(due)), due[-1]


class DbosPeer:
    """DBOS Transact: ``workers`` DBOS processes dequeueing one queue."""

    name = "dbos"

    def __init__(self) -> None:
        from dbos import DBOSClient

        self.client_class = DBOSClient
        self.client = None
        self.procs: list[subprocess.Popen] = []

    @contextlib.contextmanager
    def workers(self, count: int) -> Iterator[None]:
        """Run ``count`` DBOS worker processes while inside."""
        ready = channel("dbos-ready")
        self.procs = [
            procs.start(["-m", "bench.dbos_peer", "worker"], BENCH_READY=ready)
            for _ in range(count)
        ]
        try:
            for _ in range(count):
                marks.wait(ready, READY_TIMEOUT)
            if self.client is None:
                self.client = self.client_class(
                    system_database_url=config.DBOS_URL, application_name=config.DBOS_APP
                )
            yield
        finally:
            for proc in self.procs:
                procs.stop(proc)
            self.procs = []

    def _in_process(self, *args: int) -> dict:
        out = subprocess.run(
            [config.PYTHON, "-m", "bench.dbos_peer", *map(str, args)],
            cwd=config.ROOT,
            env=procs._env(),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        for line in out.stdout.splitlines():
            if line.startswith("BENCH-RESULT "):
                return json.loads(line.removeprefix("BENCH-RESULT "))
        raise RuntimeError(f"the DBOS peer failed: {out.stderr[-2000:]}")

    def w1(self, n: int, reps: int) -> list[float]:
        """Seconds per synchronous workflow of ``n`` steps, in-process."""
        return self._in_process("w1", n, reps)["seconds"]

    def w2(self, n: int, label: str) -> float:
        """Seconds from enqueueing one workflow that enqueues ``n`` one-step workflows
        (from inside the workflow, as this project fans out from a step) to the last row."""
        options = {"queue_name": config.DBOS_QUEUE, "workflow_name": "bench_fanout"}
        t0 = time.time()
        self.client.enqueue(options, label, n)
        if not wait_marks(label, n, timeout=300):
            raise TimeoutError(f"dbos {label}: not all {n} workflows ran")
        return max(t for _, t in read_marks(label)) - t0

    def w3(self, count: int) -> list[float]:
        """Seconds from ``start_workflow`` to the first step's start, in-process."""
        return self._in_process("w3", count)["latencies"]

    def w4(self, count: int, spread_s: float, label: str) -> tuple[dict[int, float], float]:
        """Enqueue ``count`` one-step workflows, each delayed until its due time
        (``delay_seconds``, DBOS's deferred enqueue); their due times and the last."""
        _, due = schedule(count, spread_s)
        for k in range(count):
            options = {
                "queue_name": config.DBOS_QUEUE,
                "workflow_name": "bench_leaf",
                "delay_seconds": max(0.0, due[k] - time.time()),
            }
            self.client.enqueue(options, label, k)
        return {k: due[k] for k in range(count)}, due[-1]

    def w5(self, count: int) -> None:
        """Start ``count`` workflows that park in ``DBOS.sleep`` of an hour; wait until
        every one has started (each marks a row just before it sleeps)."""
        label = channel("dbos-w5")
        options = {"queue_name": config.DBOS_QUEUE, "workflow_name": "bench_park"}
        for k in range(count):
            self.client.enqueue(options, label, k)
        if not wait_marks(label, count, timeout=600):
            raise TimeoutError(f"not all {count} DBOS workflows were parked")

    def table_footprint(self) -> dict:
        """Rows of DBOS's workflow and step tables, and the bytes of its system database."""
        import psycopg

        with psycopg.connect(config.DBOS_URL, autocommit=True) as conn:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            rows = 0
            for table in ("dbos.workflow_status", "dbos.operation_outputs"):
                try:
                    rows += conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                except psycopg.Error:
                    pass  # another DBOS version names its tables otherwise
        return {"rows": rows, "bytes": size}
