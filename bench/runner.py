"""Runs the workloads for every contender and gathers the figures.

Each workload runs for each peer in turn, on freshly started workers and emptied
tables, so one peer's leftovers never slow the next one down.
"""

import os
import time
import uuid
from dataclasses import dataclass

import psycopg

from bench import config, marks, peers, procs, stats


@dataclass(frozen=True)
class Sizes:
    """How big each workload is."""

    reps: int
    w1_steps: tuple[int, ...]
    w1_floor_inserts: int
    w2_events: int
    w3_events: int
    w4_events: int
    w4_spread_s: float
    w5_runs: int
    #: W11: active runs (of 20 memos each) that ``check_workflows`` replays.
    w11_runs: int = 10_000


QUICK = Sizes(
    reps=3,
    w1_steps=(100, 400),
    w1_floor_inserts=200,
    w2_events=200,
    w3_events=50,
    w4_events=1000,
    w4_spread_s=10.0,
    w5_runs=1000,
    w11_runs=1000,
)
FULL = Sizes(
    reps=5,
    w1_steps=(100, 400),
    w1_floor_inserts=500,
    w2_events=1000,
    w3_events=200,
    w4_events=10_000,
    w4_spread_s=100.0,
    w5_runs=10_000,
)


def log(message: str) -> None:
    """Progress on stdout (the table comes at the end)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare_databases() -> None:
    """Create the bench's databases afresh and empty its Redis database."""
    with psycopg.connect(f"{config.PG_SERVER}/postgres", autocommit=True) as conn:
        for name in (config.MAIN_DB, config.DBOS_DB):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{config.MAIN_DB}"')
    marks.redis_client().flushdb()


def setup_django() -> None:
    """Configure Django on the bench settings and migrate the bench database."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    import django

    django.setup()
    from django.core.management import call_command

    import settings  # noqa: F401 - the Celery app the engine rings through

    call_command("migrate", verbosity=0)
    marks.connection().execute(marks.SCHEMA)


def reset() -> None:
    """Empty the engine's tables, the bench rows and the Redis database between runs."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE workflows_stepresult, workflows_workflowrun, eventbus_event, "
            "bench_mark, bench_floor CASCADE"
        )
    marks.redis_client().flushdb()


def commit_floor(inserts: int, reps: int) -> list[float]:
    """Seconds per single-row INSERT committed on the same PostgreSQL, per repetition."""
    conn = marks.connection()
    per_rep = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for i in range(inserts):
            conn.execute("INSERT INTO bench_floor (v) VALUES (%s)", (i,))
        per_rep.append((time.perf_counter() - t0) / inserts)
    return per_rep


def _guarded(results: dict, key: str, fn, *args) -> None:
    """Run one peer's part of a workload; a failure is recorded, not fatal."""
    try:
        results[key] = fn(*args)
    except Exception as exc:  # the other peers' figures are still worth having
        log(f"  {key}: FAILED: {type(exc).__name__}: {exc}")
        results[key] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        reset()


def run(sizes: Sizes, workers: int, contenders: list, only: set[str]) -> dict:
    """Run the workloads in ``only`` for ``contenders``; return every figure."""
    out: dict = {}
    by_name = {c.name: c for c in contenders}
    if "W1" in only:
        out["W1"] = w1(sizes, workers, contenders)
    if "W2" in only:
        out["W2"] = _per_peer(contenders, lambda c: w2(c, sizes, workers), "W2")
    if "W3" in only:
        out["W3"] = _per_peer(contenders, lambda c: w3(c, sizes, workers), "W3")
    if "W4" in only:
        w4_peers = [c for c in contenders if c.name in ("ours", "celery", "dbos")]
        out["W4"] = _per_peer(w4_peers, lambda c: w4(c, sizes, workers), "W4")
    if "W5" in only and "ours" in by_name:
        w5_peers = [c for c in contenders if c.name in ("ours", "dbos")]
        out["W5"] = _per_peer(w5_peers, lambda c: w5(c, sizes, workers), "W5")
    if "W11" in only and "ours" in by_name:
        from bench import deploy_check

        out["W11"] = _per_peer([by_name["ours"]], lambda c: deploy_check.w11(sizes.w11_runs), "W11")
    return out


def _per_peer(contenders: list, fn, workload: str) -> dict:
    results: dict = {}
    for contender in contenders:
        log(f"{workload} {contender.name}")
        _guarded(results, contender.name, fn, contender)
    return results


def w1(sizes: Sizes, workers: int, contenders: list) -> dict:
    """Sequential steps: seconds per step for each N, and the commit floor."""
    results: dict = {}
    log("W1 commit floor")
    results["floor"] = stats.spread(commit_floor(sizes.w1_floor_inserts, sizes.reps))
    reset()

    def one(contender) -> dict:
        figures = {}
        with contender.workers(workers):
            for n in sizes.w1_steps:
                runs = contender.w1(n, sizes.reps)
                figures[str(n)] = {"per_step": stats.spread([t / n for t in runs])}
                figures[str(n)]["total"] = stats.spread(runs)
        lo, hi = str(min(sizes.w1_steps)), str(max(sizes.w1_steps))
        figures["growth"] = figures[hi]["total"]["median"] / figures[lo]["total"]["median"]
        return figures

    results.update(_per_peer(contenders, one, "W1"))
    return results


def w2(contender, sizes: Sizes, workers: int) -> dict:
    """Fan-out: seconds until every one-step unit of work ran, and units per second."""
    times = []
    with contender.workers(workers):
        for _ in range(sizes.reps):
            label = f"w2-{uuid.uuid4().hex[:8]}"
            times.append(contender.w2(sizes.w2_events, label))
    return {
        "seconds": stats.spread(times),
        "per_second": stats.spread([sizes.w2_events / t for t in times]),
        "events": sizes.w2_events,
    }


def w3(contender, sizes: Sizes, workers: int) -> dict:
    """Latency from handing work over to its first step starting."""
    with contender.workers(workers):
        contender.w3(5)  # warm-up
        samples = contender.w3(sizes.w3_events)
    return stats.latency(samples)


#: Deferred items each W4 contender runs before its idle memory is read.
W4_WARM_UP = 200


def w4(contender, sizes: Sizes, workers: int) -> dict:
    """Deferred work: lateness, duplicates, misses, early runs and worker memory."""
    label = f"w4-{uuid.uuid4().hex[:8]}"
    with contender.workers(workers):
        # Every contender first runs a few deferred items through the same path, so
        # "idle" is a warm worker: what its processes take on first use of that path
        # (imports, caches, the allocator's first arenas) is not counted as memory for
        # pending work.
        warm = f"{label}-warm"
        contender.w4(W4_WARM_UP, 1.0, warm)
        peers.wait_marks_or_stall(warm, W4_WARM_UP, stall=20.0, cap=60.0)
        time.sleep(1.0)
        idle = procs.rss(contender.procs)
        footprint = getattr(contender, "table_footprint", None)
        before = footprint() if footprint else None
        with procs.MemorySampler(contender.procs) as sampler:
            due, last = contender.w4(sizes.w4_events, sizes.w4_spread_s, label)
            handed_over = time.time()
            # What the pending items take in the database, before the first is due.
            pending = footprint() if footprint else None
            # Until all ran, or nothing new ran for 20 s after the last was due.
            time.sleep(max(0.0, last - time.time()))
            peers.wait_marks_or_stall(label, sizes.w4_events, stall=20.0, cap=300.0)
            time.sleep(2.0)  # let any duplicate land
        figures = peers.deferred_figures(label, due)
        if hasattr(contender, "emission_lateness"):
            figures["emission_lateness"] = contender.emission_lateness()
    figures.update(
        {
            "events": sizes.w4_events,
            "spread_s": sizes.w4_spread_s,
            "handover_s": handed_over - (last - sizes.w4_spread_s),
            "rss_idle": idle,
            "rss_peak": sampler.peak,
            "rss_growth": max(0, sampler.peak - idle),
            "growth_per_item": max(0, sampler.peak - idle) / sizes.w4_events,
        }
    )
    if before is not None and pending is not None:
        figures["db_bytes_per_item"] = (pending["bytes"] - before["bytes"]) / sizes.w4_events
    return figures


def w5(contender, sizes: Sizes, workers: int) -> dict:
    """Parked runs: worker memory and database rows per run sleeping at once."""
    with contender.workers(workers):
        time.sleep(1.0)
        idle = procs.rss(contender.procs)
        before = contender.table_footprint()
        t0 = time.time()
        with procs.MemorySampler(contender.procs) as sampler:
            contender.w5(sizes.w5_runs)
        parked_s = time.time() - t0
        time.sleep(1.0)
        after_rss = procs.rss(contender.procs)
        after = contender.table_footprint()
    n = sizes.w5_runs
    return {
        "runs": n,
        "park_seconds": parked_s,
        "rss_idle": idle,
        "rss_parked": after_rss,
        "rss_peak": sampler.peak,
        "rss_growth_per_run": max(0, after_rss - idle) / n,
        "rows_per_run": (after["rows"] - before["rows"]) / n,
        "bytes_per_run": (after["bytes"] - before["bytes"]) / n,
    }


def median_of(spread: dict | None) -> float | None:
    """The median of a :func:`stats.spread`, if there is one."""
    return None if not spread else spread.get("median")
