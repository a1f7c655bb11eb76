"""W10: events per second accepted by the HTTP event API, against ``send_batch`` in-process.

``python -m bench.event_api [--threads 8] [--batch 100] [--requests 50]`` creates its
own PostgreSQL database (``BENCH_EVENT_API_DB``, default ``bench_event_api``), serves the
project with ``manage.py runserver`` (threaded) in a subprocess, and has ``--threads``
clients each post ``--requests`` arrays of ``--batch`` events to ``POST /e/<key>`` on
persistent connections. Then the same threads send the same events with
``eventbus.send_batch`` in this process. It prints both rates and their ratio (the HTTP
overhead), and writes ``bench/results/event_api.json``. The events trigger no workflow:
this measures accepting events, not running them.
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import psycopg

from bench import config, ports

DB = os.environ.get("BENCH_EVENT_API_DB", "bench_event_api")


def _setup() -> dict[str, str]:
    with psycopg.connect(f"{config.PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB}"')
    env = dict(os.environ, DATABASE_URL=f"{config.PG_SERVER}/{DB}")
    env["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return env


def _body(thread: int, request: int, batch: int) -> list[dict]:
    return [
        {"name": "bench/http.event", "data": {"t": thread, "r": request, "i": i}}
        for i in range(batch)
    ]


def _over_http(port: int, key: str, threads: int, requests: int, batch: int) -> float:
    errors: list[str] = []

    def client(thread: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for request in range(requests):
            raw = json.dumps(_body(thread, request, batch))
            conn.request("POST", f"/e/{key}", raw, {"Content-Type": "application/json"})
            reply = conn.getresponse()
            payload = json.loads(reply.read())
            if reply.status != 200 or len(payload["ids"]) != batch:
                errors.append(f"{reply.status} {payload}")
        conn.close()

    return _timed(client, threads, errors)


def _in_process(threads: int, requests: int, batch: int) -> float:
    from django.db import connection

    import eventbus

    errors: list[str] = []

    def sender(thread: int) -> None:
        try:
            for request in range(requests):
                eventbus.send_batch(_body(thread, request, batch))
        finally:
            connection.close()

    return _timed(sender, threads, errors)


def _timed(work, threads: int, errors: list[str]) -> float:
    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    t0 = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return elapsed


def main(argv: list[str] | None = None) -> dict:
    """Run W10 and return (and write) its figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.event_api")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--requests", type=int, default=50, help="per thread")
    args = parser.parse_args(argv)
    env = _setup()
    import eventbus
    from eventbus.models import Event

    _, key = eventbus.create_event_key()
    port = ports.free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=config.ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("runserver did not start") from None
                time.sleep(0.2)
        _over_http(port, key, args.threads, 2, args.batch)  # warm-up: connections, imports
        Event.objects.all().delete()
        http_s = _over_http(port, key, args.threads, args.requests, args.batch)
    finally:
        server.terminate()
        server.wait(timeout=30)
    total = args.threads * args.requests * args.batch
    assert Event.objects.count() == total, "every accepted event is stored"
    _in_process(args.threads, 2, args.batch)
    Event.objects.all().delete()
    local_s = _in_process(args.threads, args.requests, args.batch)
    figures = {
        "threads": args.threads,
        "batch": args.batch,
        "events": total,
        "http_events_per_s": round(total / http_s),
        "send_batch_events_per_s": round(total / local_s),
        "http_overhead_ratio": round(http_s / local_s, 2),
    }
    print(
        f"W10: {total} events in arrays of {args.batch} from {args.threads} threads: "
        f"HTTP {figures['http_events_per_s']}/s, send_batch {figures['send_batch_events_per_s']}"
        f"/s in-process; HTTP takes {figures['http_overhead_ratio']}x as long"
    )
    config.RESULTS_DIR.mkdir(exist_ok=True)
    (config.RESULTS_DIR / "event_api.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
