"""W8: event batching against one run per event; ``send`` latency with admission options.

``python -m bench.admission [--events 10000] [--workers 2] [--concurrency 2] [--sends 300]``
creates its own PostgreSQL database (``BENCH_MAIN_DB``, default ``bench_admission``) and
uses its own Redis database and queue, then:

- *W2-style*: sends ``--baseline-events`` (2,000) events to ``bench-adm-each`` (one run
  per event, one step writing one row) with ``send_batch`` in chunks of 500, and times
  until every row is written by the workers (a rate: fewer events measure it as well);
- *W8*: the same events to ``bench-adm-batch`` (``batch_events={"max_size": 100}``, one
  step writing the batch's rows), timed the same way;
- *send latency*, with the workers stopped: ``--sends`` rounds, each sending one event to
  a plain workflow, one to a ``rate_limit``-ed one (50 keys, every send admitted) and one
  to a ``singleton`` one (a new key each time, so each send creates a run), interleaved so
  the three see the same machine.

Prints the figures and writes ``bench/results/admission.json``.
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("BENCH_MAIN_DB", "bench_admission")
os.environ.setdefault("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
os.environ.setdefault("BENCH_WF_QUEUE", "bench-adm")

import psycopg
import redis

from bench import config, marks, procs


def _setup() -> None:
    with psycopg.connect(f"{config.PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{config.MAIN_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{config.MAIN_DB}"')
    os.environ["DATABASE_URL"] = config.MAIN_URL
    os.environ["CELERY_BROKER_URL"] = config.REDIS_URL
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    marks.connection().execute(marks.SCHEMA)


def _marks(label: str) -> int:
    row = (
        marks.connection()
        .execute("SELECT count(*) FROM bench_mark WHERE label = %s", (label,))
        .fetchone()
    )
    return row[0]


def _throughput(name: str, events: int, label: str) -> float:
    """Events per second from the first send to the last row written."""
    import eventbus

    t0 = time.perf_counter()
    for start in range(0, events, 500):
        eventbus.send_batch(
            [
                {"name": name, "data": {"label": label, "k": k}}
                for k in range(start, min(events, start + 500))
            ]
        )
    if not procs.wait_until(lambda: _marks(label) >= events, timeout=900, interval=0.1):
        raise SystemExit(f"{label}: only {_marks(label)} of {events} rows after 900 s")
    return events / (time.perf_counter() - t0)


def _latency(sends: int) -> dict[str, dict[str, float]]:
    import eventbus

    samples: dict[str, list[float]] = {"plain": [], "rate_limit": [], "singleton": []}
    names = {"plain": "bench/adm.plain", "rate_limit": "bench/adm.rated"}
    names["singleton"] = "bench/adm.single"
    for i in range(20):  # warm-up: connections, caches, the first rows of each table
        for name in names.values():
            eventbus.send(name, {"user": f"warm-{i}"})
    for i in range(sends):
        for kind, name in names.items():
            user = f"u{i % 50}" if kind == "rate_limit" else f"s{i}"
            t0 = time.perf_counter()
            eventbus.send(name, {"user": user})
            samples[kind].append((time.perf_counter() - t0) * 1000)
    return {
        kind: {
            "median_ms": round(statistics.median(values), 3),
            "p90_ms": round(statistics.quantiles(values, n=10)[-1], 3),
        }
        for kind, values in samples.items()
    }


def main() -> None:
    """Print the W8 and send-latency figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument(
        "--baseline-events", type=int, default=2_000, help="events of the one-run-per-event phase"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--sends", type=int, default=300)
    args = parser.parse_args()
    config.RESULTS_DIR.mkdir(exist_ok=True)
    _setup()
    redis.Redis.from_url(config.REDIS_URL).delete(config.WF_QUEUE)  # an earlier run's bells
    workers = [
        procs.celery_worker("settings", config.WF_QUEUE, args.concurrency)
        for _ in range(args.workers)
    ]
    try:
        time.sleep(3.0)  # the workers connect
        each = _throughput("bench/adm.each", args.baseline_events, "w8-each")
        # W2's runs are all done: bells still queued for them (the dispatcher re-rings a
        # run queued for RING_TIMEOUT_SECONDS) would only delay the next phase's.
        redis.Redis.from_url(config.REDIS_URL).delete(config.WF_QUEUE)
        batched = _throughput("bench/adm.batch", args.events, "w8-batch")
    finally:
        for worker in workers:
            procs.stop(worker)
    latency = _latency(args.sends)
    redis.Redis.from_url(config.REDIS_URL).delete(config.WF_QUEUE)  # the latency runs' bells
    figures = {
        "events": args.events,
        "baseline_events": args.baseline_events,
        "workers": f"{args.workers} x {args.concurrency}",
        "one_run_per_event_per_s": round(each, 1),
        "batched_per_s": round(batched, 1),
        "speedup": round(batched / each, 2),
        "send_latency": latency,
        "rate_limit_ratio": round(
            latency["rate_limit"]["median_ms"] / latency["plain"]["median_ms"], 3
        ),
        "singleton_ratio": round(
            latency["singleton"]["median_ms"] / latency["plain"]["median_ms"], 3
        ),
    }
    (config.RESULTS_DIR / "admission.json").write_text(json.dumps(figures, indent=2))
    print(f"W8: {args.events} events ({args.baseline_events} one per run), {figures['workers']}")
    print(f"  one run per event (W2's shape): {each:8.1f} events/s")
    print(f"  batch_events max_size 100:      {batched:8.1f} events/s ({figures['speedup']}x)")
    for kind, values in latency.items():
        print(
            f"  send latency {kind:<10}: median {values['median_ms']:.3f} ms, "
            f"p90 {values['p90_ms']:.3f} ms"
        )
    print(
        f"  ratios to plain (median): rate_limit {figures['rate_limit_ratio']}, "
        f"singleton {figures['singleton_ratio']}"
    )


if __name__ == "__main__":
    main()
