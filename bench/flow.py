"""W7: a fan-out under a per-key concurrency limit, against the same fan-out without one.

``python -m bench.flow [--events 2000] [--keys 100] [--workers 2] [--reps 3]`` uses the
bench's databases and Redis (see bench/config.py; it drops and recreates them). In one
run and with the same worker processes, it times W2's fan-out (one trigger emitting
``--events`` one-step runs) and W7: the same fan-out into a workflow with
``concurrency={"limit": 2, "key": "event.data.key"}`` over ``--keys`` keys. It prints
runs per second of each, their ratio, and the database statements one run costs with
and without the limit (counted in-process, send to end), and writes
``bench/results/flow.json``.
"""

import argparse
import json
import statistics
import time
import uuid

from bench import config, peers
from bench.runner import prepare_databases, reset, setup_django


def _fan_out(ours: peers.Ours, trigger: str, n: int, keys: int) -> float:
    label = f"w7-{uuid.uuid4().hex[:8]}"
    t0 = time.time()
    ours.send(trigger, {"label": label, "n": n, "keys": keys})
    if not peers.wait_marks(label, n, timeout=600):
        raise TimeoutError(f"{trigger}: not all {n} leaves ran")
    return max(t for _, t in peers.read_marks(label)) - t0


def statements_per_run(name: str, data: dict) -> int:
    """Statements from ``send`` to the end of one run, executed in this process."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from eventbus import send
    from workflows import engine
    from workflows.models import WorkflowRun
    from workflows.testing import no_broker

    with no_broker(), CaptureQueriesContext(connection) as queries:
        event_id = send(name, data)
        run = WorkflowRun.objects.get(event_id=event_id)
        engine.execute(run.pk)
    run.refresh_from_db()
    assert run.status == "completed", run.error
    return len(queries) - 1  # the lookup of the run above is the bench's, not the engine's


def main() -> None:
    """Print the W7 figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    prepare_databases()
    setup_django()
    import bench.workflows  # noqa: F401 - registers the bench workflows

    ours = peers.Ours()
    plain = {"label": "w7-count", "k": 0}
    # Warm-up: the first send of a process looks up the default workspace (remembered).
    statements_per_run("bench/leaf", plain)
    counts = {
        "unlimited": statements_per_run("bench/leaf", plain),
        "limited": statements_per_run("bench/leaf.limited", {**plain, "k": 1, "key": 0}),
    }
    rates: dict[str, list[float]] = {"W2": [], "W7": []}
    with ours.workers(args.workers):
        _fan_out(ours, "bench/fanout.requested", 100, 1)  # warm-up
        for _ in range(args.reps):
            for name, trigger in (
                ("W2", "bench/fanout.requested"),
                ("W7", "bench/fanout-limited.requested"),
            ):
                reset()
                seconds = _fan_out(ours, trigger, args.events, args.keys)
                rates[name].append(args.events / seconds)
    w2, w7 = statistics.median(rates["W2"]), statistics.median(rates["W7"])
    print(f"W2: fan-out of {args.events} one-step runs: {w2:.0f} runs/s (median of {args.reps})")
    print(
        f"W7: the same under concurrency limit 2 per key over {args.keys} keys: "
        f"{w7:.0f} runs/s ({w7 / w2:.0%} of W2)"
    )
    print(
        f"statements per run, send to end: {counts['unlimited']} without a limit, "
        f"{counts['limited']} with one (+{counts['limited'] - counts['unlimited']})"
    )
    config.RESULTS_DIR.mkdir(exist_ok=True)
    (config.RESULTS_DIR / "flow.json").write_text(
        json.dumps({"runs_per_second": rates, "statements_per_run": counts, **vars(args)}, indent=2)
    )


if __name__ == "__main__":
    main()
