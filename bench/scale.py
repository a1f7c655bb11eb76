"""W6: flat cost at scale (issue 18): the console and the dispatcher on a million runs.

``python -m bench.scale [--rows N] [--reps N] [--no-purge]`` creates its own PostgreSQL
database (``BENCH_SCALE_DB``, default ``bench_scale``, on ``BENCH_PG_SERVER``), migrates
it, and measures on the empty tables, then on ``N`` finished runs (default 1,000,000)
filled in with set-based SQL (``INSERT … SELECT generate_series``): three workspaces,
four workflows, one trigger event per run and one or two steps per run, then ANALYZE.

Measured three times: on empty tables, on 200 runs (enough for a full page of each
list: an empty list renders no row, so it is not the same page), and on the ``N`` runs.
Each time: every admin list (runs, events, steps; the default page and with
one sidebar filter), rendered by Django's test client as a logged-in superuser (median
of ``--reps`` requests after one warm-up), and one dispatcher pass
(:func:`workflows.dispatcher.tick`). It prints both figures and their ratio, then runs
``purge_runs --older-than 0`` over all of them: its progress, peak memory (RSS growth of
this process and tracemalloc's peak of Python allocations), duration, and the longest
dispatcher pass measured beside it on another connection (purging must not block the
workers), and the latency of ``eventbus.send`` beside it in a third process: every
0.2 s an event that starts a ``bench-latency`` run (an event and a run INSERTed while
the purge deletes), median, p99 and max, against ``--idle-sends`` (default 50) of the
same sends on the filled tables before the purge starts. No worker runs: each send's
message stays on the broker queue (``BENCH_REDIS_URL``; give it a db of its own and
flush it afterwards), and its queued run stays in the table (not purgeable). The figures
go to ``bench/results/scale.json`` (``--out``).
"""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc

from bench import config

DB_NAME = os.environ.get("BENCH_SCALE_DB", "bench_scale")
DB_URL = f"{config.PG_SERVER}/{DB_NAME}"
#: The workflows the runs belong to (registered by ``bench.workflows``), with a trigger.
WORKFLOWS = [
    ("bench-steps", "bench/steps.requested"),
    ("bench-leaf", "bench/leaf"),
    ("bench-latency", "bench/latency"),
    ("bench-park", "bench/park"),
]
WORKSPACES = 3
FILL_CHUNK = 250_000
#: Runs of the second baseline: enough for a full list page (50 rows) of each list.
PAGE_ROWS = 200


def log(message: str) -> None:
    """Progress on stdout."""
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare_database() -> None:
    """Create the W6 database afresh."""
    import psycopg

    with psycopg.connect(f"{config.PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def setup_django() -> None:
    """Django on the bench settings, on the W6 database; migrate it."""
    os.environ["DATABASE_URL"] = DB_URL
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    import django

    django.setup()
    from django.core.management import call_command
    from django.test.utils import setup_test_environment

    setup_test_environment()  # the test client's host, in-memory mail
    call_command("migrate", verbosity=0)


def fill(rows: int, vacuum: bool = True) -> float:
    """Insert ``rows`` finished runs, their trigger events and steps; return seconds.

    Then ANALYZE (``VACUUM ANALYZE`` with ``vacuum``, which needs autocommit).
    """
    from django.db import connection, transaction

    from eventbus.models import Workspace

    t0 = time.perf_counter()
    ids = [Workspace.objects.get_or_create(slug=f"scale-{i}")[0].pk for i in range(WORKSPACES)]
    ws_array = "ARRAY[" + ",".join(str(i) for i in ids) + "]::bigint[]"
    wf_array = "ARRAY[" + ",".join(f"'{w}'" for w, _ in WORKFLOWS) + "]"
    name_array = "ARRAY[" + ",".join(f"'{n}'" for _, n in WORKFLOWS) + "]"
    # Run i: created i seconds after the first, a day before now at the latest; its
    # event has the same id prefix scheme (md5 of a tag and i) so runs find their event.
    for start in range(1, rows + 1, FILL_CHUNK):
        end = min(rows, start + FILL_CHUNK - 1)
        with transaction.atomic(), connection.cursor() as cursor:
            params = {"start": start, "end": end, "rows": rows}
            cursor.execute(
                f"""
                INSERT INTO eventbus_event (id, name, data, ts, status, created_at,
                    emitted_at, workspace_id, armed)
                SELECT md5('e' || i)::uuid, ({name_array})[1 +  i %% {len(WORKFLOWS)}],
                    jsonb_build_object('i', i),
                    (extract(epoch FROM t) * 1000)::bigint, 'emitted', t, t,
                    ({ws_array})[1 +  i %% {WORKSPACES}], true
                FROM generate_series(%(start)s, %(end)s) AS i,
                    LATERAL (SELECT now() - interval '1 day'
                             - (%(rows)s - i) * interval '1 second' AS t) AS at
                """,
                params,
            )
            cursor.execute(
                f"""
                INSERT INTO workflows_workflowrun (id, workflow_id, status, output, attempt,
                    created_at, started_at, finished_at, updated_at, event_id, workspace_id,
                    version, is_replay, lost_executions, depth, held_by, order_at, priority,
                    slot_1, slot_2, throttle_key)
                SELECT md5('r' || i)::uuid, ({wf_array})[1 +  i %% {len(WORKFLOWS)}],
                    CASE WHEN  i %% 50 = 0 THEN 'failed' WHEN  i %% 97 = 0 THEN 'cancelled'
                         ELSE 'completed' END,
                    '{{"ok": true}}'::jsonb, 0, t, t, t + interval '20 ms', t,
                    md5('e' || i)::uuid, ({ws_array})[1 +  i %% {WORKSPACES}],
                    'v1', false, 0, 0, '', t, 0, '', '', ''
                FROM generate_series(%(start)s, %(end)s) AS i,
                    LATERAL (SELECT now() - interval '1 day'
                             - (%(rows)s - i) * interval '1 second' AS t) AS at
                """,
                params,
            )
            # One step per run, two for every other run.
            cursor.execute(
                """
                INSERT INTO workflows_stepresult (step_id, key, position, kind, status,
                    output, attempt, started_at, finished_at, updated_at, run_id,
                    output_bytes)
                SELECT 'step-' || p, md5('k' || i || '-' || p), p,
                    CASE WHEN p = 0 THEN 'run' ELSE 'send_event' END, 'completed',
                    '1'::jsonb, 0, t, t + interval '5 ms', t, md5('r' || i)::uuid, 1
                FROM generate_series(%(start)s, %(end)s) AS i,
                    LATERAL (SELECT now() - interval '1 day'
                             - (%(rows)s - i) * interval '1 second' AS t) AS at,
                    LATERAL generate_series(0,  i %% 2) AS p
                """,
                params,
            )
        if rows > FILL_CHUNK:
            log(f"  filled {end:,}/{rows:,} runs")
    analyze(vacuum)
    return time.perf_counter() - t0


def analyze(vacuum: bool = True) -> None:
    """Fresh planner statistics for the big tables."""
    from django.db import connection

    with connection.cursor() as cursor:
        for table in ("eventbus_event", "workflows_workflowrun", "workflows_stepresult"):
            cursor.execute(f"{'VACUUM ' if vacuum else ''}ANALYZE {table}")


def pages() -> list[tuple[str, str]]:
    """(label, URL) of every list measured."""
    from eventbus.models import Workspace

    ws = Workspace.objects.filter(slug="scale-1").values_list("pk", flat=True).first() or 0
    return [
        ("runs", "/admin/workflows/workflowrun/"),
        ("runs ?status=failed", "/admin/workflows/workflowrun/?status__exact=failed"),
        ("runs ?workflow", "/admin/workflows/workflowrun/?workflow_id=bench-park"),
        ("events", "/admin/eventbus/event/"),
        ("events ?workspace", f"/admin/eventbus/event/?workspace__id__exact={ws}"),
        ("events ?name", "/admin/eventbus/event/?name=bench%2Fleaf"),
        ("steps", "/admin/workflows/stepresult/"),
        ("steps ?kind", "/admin/workflows/stepresult/?kind__exact=send_event"),
    ]


def measure(reps: int) -> dict[str, float]:
    """Milliseconds (median of ``reps``) per list page and per dispatcher pass."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from workflows import dispatcher

    user_model = get_user_model()
    user = user_model.objects.filter(username="scale-admin").first()
    if user is None:
        user = user_model.objects.create_superuser("scale-admin", "a@example.com", "x")
    client = Client()
    client.force_login(user)
    out: dict[str, float] = {}
    for label, url in pages():
        response = client.get(url)  # warm-up (templates, caches)
        assert response.status_code == 200, (url, response.status_code)
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            response = client.get(url)
            samples.append((time.perf_counter() - t0) * 1000)
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        out[label] = statistics.median(samples)
        out[f"{label} (queries)"] = len(queries)
    dispatcher.tick()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        dispatcher.tick()
        samples.append((time.perf_counter() - t0) * 1000)
    out["dispatcher tick"] = statistics.median(samples)
    return out


class _Rss(threading.Thread):
    """Samples this process's resident memory every 50 ms; keeps the peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.base = self.peak = _rss()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, _rss())


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


#: The dispatcher passes timed beside the purge, in a process of their own (a thread
#: would wait for this process's GIL and measure that instead).
TICKER = """
import json, os, sys, threading, time
import django
django.setup()
from workflows import dispatcher
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
samples = []
while not stop.wait(0.2):
    t0 = time.perf_counter()
    dispatcher.tick()
    samples.append((time.perf_counter() - t0) * 1000)
print(json.dumps(samples))
"""


#: Timed ``eventbus.send`` calls, in a process of their own too: after a warm-up (its
#: connections to the database and the broker; ``argv[2]`` sends), one every 0.2 s,
#: ``argv[1]`` of them or, with 0, until its stdin closes. Each event starts a run (no
#: worker takes it).
SENDER = """
import json, os, sys, threading, time
import django
django.setup()
import eventbus
count = int(sys.argv[1])
def send(tag):
    t0 = time.perf_counter()
    eventbus.send("bench/latency", {"channel": f"scale-send-{os.getpid()}-{tag}"})
    return (time.perf_counter() - t0) * 1000
for i in range(int(sys.argv[2])):
    send(f"warm-{i}")
print("ready", flush=True)
stop = threading.Event()
if not count:
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
samples = []
while not stop.wait(0.2) and (not count or len(samples) < count):
    samples.append(send(len(samples)))
print(json.dumps(samples), flush=True)
"""
#: Sends of the warm-up of each sender process (not timed; their runs stay too).
SENDER_WARMUP = 5


class _Sender:
    """Timed sends on a connection (and in a process) of their own."""

    def start(self, count: int = 0) -> None:
        """Start sending (``count`` sends, or until :meth:`stop` with 0) once warm."""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SENDER, str(count), str(SENDER_WARMUP)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=os.environ.copy(),
            cwd=str(config.ROOT),
            text=True,
        )
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise SystemExit(f"the sender did not start: {line!r}")

    def stop(self) -> list[float]:
        """Stop (or, with a count, wait for the last send); the milliseconds per send."""
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.proc.wait(timeout=60)
        return json.loads(out.strip().splitlines()[-1]) if out.strip() else []


def _stats(samples: list[float]) -> dict:
    """Count, median, p99 and max of ``samples`` (milliseconds)."""
    return {
        "passes": len(samples),
        "median": statistics.median(samples) if samples else None,
        "p99": statistics.quantiles(samples, n=100, method="inclusive")[-1]
        if len(samples) > 1
        else None,
        "max": max(samples) if samples else None,
    }


class _Ticker:
    """Dispatcher passes on a connection (and in a process) of their own."""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TICKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=os.environ.copy(),
            cwd=str(config.ROOT),
            text=True,
        )
        time.sleep(2.0)  # its Django set up before the purge starts

    def stop(self) -> list[float]:
        out, _ = self.proc.communicate("", timeout=60)
        return json.loads(out.strip().splitlines()[-1]) if out.strip() else []


class _Progress(io.TextIOBase):
    """The command's stdout: every line counted, one in ``every`` (and the last) shown."""

    def __init__(self, every: int) -> None:
        self.every, self.lines, self.last = every, 0, ""
        self.first_seen = ""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if not line.strip():
                continue
            self.lines += 1
            self.last = line
            self.first_seen = self.first_seen or line
            if self.lines % self.every == 1 or not line.startswith("deleted"):
                print(f"    purge_runs: {line}", flush=True)
        return len(text)


def purge(batch_size: int, idle_sends: int = 50) -> dict:
    """``purge_runs --older-than 0`` over every run, measured (``idle_sends`` before)."""
    from django.core.management import call_command

    from eventbus.models import Event
    from workflows.models import StepResult, WorkflowRun

    runs_before = WorkflowRun.objects.count()
    idle: list[float] = []
    if idle_sends:
        log(f"  {idle_sends} timed sends on the filled tables (idle)")
        baseline = _Sender()
        baseline.start(idle_sends)
        idle = baseline.stop()
    rss, ticker, sender = _Rss(), _Ticker(), _Sender()
    progress = _Progress(every=max(1, runs_before // batch_size // 20))
    rss.start()
    ticker.start()
    sender.start()
    tracemalloc.start()
    t0 = time.perf_counter()
    call_command(
        "purge_runs", "--older-than", "0", "--batch-size", str(batch_size), stdout=progress
    )
    seconds = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    samples = ticker.stop()
    sends = sender.stop()
    rss.done.set()
    rss.join()
    return {
        "runs": runs_before,
        "batch_size": batch_size,
        "seconds": seconds,
        "runs_per_second": runs_before / seconds if seconds else None,
        "progress_lines": progress.lines,
        "last_line": progress.last,
        "rss_base_mb": rss.base / 2**20,
        "rss_growth_mb": (rss.peak - rss.base) / 2**20,
        "tracemalloc_peak_mb": traced_peak / 2**20,
        "runs_left": WorkflowRun.objects.count(),
        "finished_runs_left": WorkflowRun.objects.finished().count(),
        "runs_sent": len(idle) + len(sends) + SENDER_WARMUP * (2 if idle_sends else 1),
        "steps_left": StepResult.objects.count(),
        "events_kept": Event.objects.count(),
        "tick_during_purge_ms": {
            "passes": len(samples),
            "median": statistics.median(samples) if samples else None,
            "max": max(samples) if samples else None,
        },
        "send_idle_ms": _stats(idle),
        "send_during_purge_ms": _stats(sends),
    }


def table(empty: dict, page: dict, full: dict, rows: int) -> str:
    """The figures side by side."""
    lines = [
        f"{'W6: ' + format(rows, ',') + ' runs':<24} {'empty':>7} {PAGE_ROWS:>5} runs "
        f"{'filled':>8} {'/empty':>7} {'/page':>6} {'queries':>8}  (ms, medians)",
    ]
    for label in empty:
        if label.endswith("(queries)"):
            continue
        lines.append(
            f"{label:<24} {empty[label]:>7.1f} {page[label]:>10.1f} {full[label]:>8.1f} "
            f"{full[label] / empty[label]:>7.2f} {full[label] / page[label]:>6.2f} "
            f"{full.get(label + ' (queries)', '')!s:>8}"
        )
    return "\n".join(lines)


def truncate() -> None:
    """Empty the big tables."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE workflows_stepresult, workflows_workflowrun, eventbus_event CASCADE"
        )


def main() -> None:
    """Fill, measure, purge; print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="finished runs to fill")
    parser.add_argument("--reps", type=int, default=7, help="requests per page (median)")
    parser.add_argument("--batch-size", type=int, default=1000, help="purge_runs batch size")
    parser.add_argument("--no-purge", action="store_true", help="skip the purge")
    parser.add_argument(
        "--idle-sends", type=int, default=50, help="timed sends before the purge (baseline)"
    )
    parser.add_argument("--out", default=str(config.RESULTS_DIR / "scale.json"))
    args = parser.parse_args()

    log(f"database {DB_NAME}")
    prepare_database()
    setup_django()
    analyze()
    log("measuring on empty tables")
    empty = measure(args.reps)
    # Empty lists render no row: a page of rows costs its rendering whatever the table
    # size. The second baseline is a table just big enough to fill a page.
    log(f"measuring on {PAGE_ROWS} runs (one full page)")
    fill(PAGE_ROWS)
    page = measure(args.reps)
    truncate()
    log(f"filling {args.rows:,} runs")
    fill_s = fill(args.rows)
    log(f"filled in {fill_s:.1f} s")
    log("measuring on filled tables")
    full = measure(args.reps)
    print(table(empty, page, full, args.rows), flush=True)
    result: dict = {
        "rows": args.rows,
        "fill_seconds": fill_s,
        "empty": empty,
        "one_page": page,
        "filled": full,
    }
    timed = [k for k in empty if not k.endswith("(queries)")]
    result["ratios"] = {k: full[k] / empty[k] for k in timed if empty[k]}
    result["ratios_to_one_page"] = {k: full[k] / page[k] for k in timed if page[k]}
    if not args.no_purge:
        log(f"purge_runs --older-than 0 --batch-size {args.batch_size}")
        result["purge"] = figures = purge(args.batch_size, args.idle_sends)
        tick = figures["tick_during_purge_ms"]
        sent, idle = figures["send_during_purge_ms"], figures["send_idle_ms"]
        print(
            f"purge: {figures['runs']:,} runs in {figures['seconds']:.1f} s "
            f"({figures['runs_per_second']:.0f} runs/s), {figures['progress_lines']} progress "
            f"lines, RSS growth {figures['rss_growth_mb']:.1f} MB, tracemalloc peak "
            f"{figures['tracemalloc_peak_mb']:.1f} MB; left: {figures['runs_left']} runs "
            f"({figures['finished_runs_left']} finished; the rest queued by the timed sends), "
            f"{figures['steps_left']} steps; dispatcher pass beside it: median "
            f"{tick['median'] or 0:.1f} ms, max {tick['max'] or 0:.1f} ms over {tick['passes']}",
            flush=True,
        )
        print(
            f"send during purge (an event and a run each): median {sent['median'] or 0:.1f}, "
            f"p99 {sent['p99'] or 0:.1f}, max {sent['max'] or 0:.1f} ms over "
            f"{sent['passes']} sends, against median {idle['median'] or 0:.1f}, p99 "
            f"{idle['p99'] or 0:.1f}, max {idle['max'] or 0:.1f} ms idle "
            f"({idle['passes']} sends on the filled tables before it)",
            flush=True,
        )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
