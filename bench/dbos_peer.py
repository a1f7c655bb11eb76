"""The DBOS Transact peer, on its own system database of the same PostgreSQL.

``python -m bench.dbos_peer worker`` is one DBOS worker process that dequeues the bench
queue. ``w1`` and ``w3`` run in-process in a DBOS process that listens to no queue (as
DBOS is meant to be used) and print their figures as JSON on stdout.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time

from dbos import DBOS, DBOSConfig

from bench import config, marks


@DBOS.step()
def identity(i: int) -> int:
    """A trivial step."""
    return i


@DBOS.workflow(name="bench_steps")
def steps(n: int) -> int:
    """W1: ``n`` trivial steps one after another."""
    for i in range(n):
        identity(i)
    return n


@DBOS.step()
def mark_step(label: str, key: int) -> float:
    """Write one row."""
    return marks.mark(label, key)


@DBOS.workflow(name="bench_leaf")
def leaf(label: str, key: int) -> None:
    """W2: a one-step workflow that writes one row."""
    mark_step(label, key)


@DBOS.workflow(name="bench_fanout")
def fanout(label: str, n: int) -> int:
    """W2: enqueue ``n`` one-step workflows from inside a workflow (as ours fans out)."""
    for k in range(n):
        DBOS.enqueue_workflow(config.DBOS_QUEUE, leaf, label, k)
    return n


@DBOS.workflow(name="bench_park")
def park(label: str, key: int) -> None:
    """W5: mark that the workflow started, then park it in a durable sleep of an hour."""
    mark_step(label, key)
    DBOS.sleep(3600)


@DBOS.step()
def notify_step(channel: str) -> float:
    """Notify the driver that this step started."""
    return marks.notify(channel)


@DBOS.workflow(name="bench_latency")
def latency(channel: str) -> None:
    """W3 and warm-up: the first step notifies when it starts."""
    notify_step(channel)


def _launch(queues: list[str]) -> None:
    dbos_config: DBOSConfig = {
        "name": config.DBOS_APP,
        "system_database_url": config.DBOS_URL,
        "log_level": "WARNING",
    }
    DBOS(config=dbos_config)
    DBOS.listen_queues(queues)
    DBOS.launch()
    DBOS.register_queue(config.DBOS_QUEUE, polling_interval_sec=config.DBOS_POLL_SECONDS)


def worker() -> None:
    """Dequeue and run bench workflows until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    _launch([config.DBOS_QUEUE])
    marks.notify(os.environ.get("BENCH_READY", "dbos-ready"))
    stop.wait()
    DBOS.destroy(workflow_completion_timeout_sec=2)


def w1(n: int, reps: int) -> dict:
    """Seconds of each of ``reps`` synchronous workflows of ``n`` steps."""
    _launch([])
    steps(5)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        steps(n)
        times.append(time.perf_counter() - t0)
    return {"seconds": times}


def w3(count: int) -> dict:
    """Seconds from ``start_workflow`` to the first step's start, ``count`` times."""
    _launch([])
    channel = f"dbos-w3-{time.time()}"
    DBOS.start_workflow(latency, channel).get_result()
    marks.wait(channel)
    samples = []
    for _ in range(count):
        t0 = time.time()
        handle = DBOS.start_workflow(latency, channel)
        samples.append(marks.wait(channel) - t0)
        handle.get_result()
    return {"latencies": samples}


def main(argv: list[str]) -> None:
    """Entry point: ``worker``, ``w1 N REPS`` or ``w3 COUNT``."""
    parser = argparse.ArgumentParser(prog="python -m bench.dbos_peer")
    parser.add_argument("mode", choices=["worker", "w1", "w3"])
    parser.add_argument("args", nargs="*", type=int)
    ns = parser.parse_args(argv)
    if ns.mode == "worker":
        worker()
        return
    result = w1(*ns.args) if ns.mode == "w1" else w3(*ns.args)
    print("BENCH-RESULT " + json.dumps(result), flush=True)
    DBOS.destroy(workflow_completion_timeout_sec=2)


if __name__ == "__main__":
    main(sys.argv[1:])
