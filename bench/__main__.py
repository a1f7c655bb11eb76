"""``python -m bench [--quick]``: this project beside DBOS Transact and plain Celery.

See ``docs/benchmarks.md`` for what each workload measures and how to read the table.
"""

import argparse
import signal
import sys
import time

from bench import config, procs, report, runner

WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W11")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a CI smoke test")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per peer")
    parser.add_argument("--reps", type=int, help="repetitions (default: 3 quick, 5 full)")
    parser.add_argument("--only", help=f"comma-separated workloads out of {','.join(WORKLOADS)}")
    parser.add_argument(
        "--peers", default="ours,ours-sync,celery,dbos", help="which contenders to run"
    )
    parser.add_argument("--fanout", type=int, help="events of W2 (default: 200 quick, 1000 full)")
    parser.add_argument(
        "--out",
        help="path of the .json/.png without suffix (default: bench/results/latest, or "
        "bench/results/quick with --quick, so a smoke test never replaces the published "
        "full figures)",
    )
    return parser.parse_args(argv)


def _interrupt(signum: int, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    """Run the bench; 1 on an error of ours or a broken W4 promise, else 0 (never on timing)."""
    args = _parse(argv)
    if args.out is None:
        args.out = str(config.RESULTS_DIR / ("quick" if args.quick else "latest"))
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a background job ignores it
        signal.signal(sig, _interrupt)
    sizes = runner.QUICK if args.quick else runner.FULL
    if args.reps or args.fanout:
        sizes = runner.Sizes(
            **{
                **sizes.__dict__,
                "reps": args.reps or sizes.reps,
                "w2_events": args.fanout or sizes.w2_events,
            }
        )
    only = set(args.only.upper().split(",")) if args.only else set(WORKLOADS)
    wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
    config.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (config.RESULTS_DIR / "workers.log").write_bytes(b"")
    started = time.time()
    runner.log(f"{'quick' if args.quick else 'full'} run, {args.workers} workers, {sizes}")
    runner.prepare_databases()
    runner.setup_django()

    from bench import peers

    contenders = []
    notes = []
    for name in wanted:
        if name == "ours":
            contenders.append(peers.Ours())
        elif name == "ours-sync":
            contenders.append(peers.OursSync())
        elif name == "ours-pgbouncer":
            contenders.append(peers.OursPgBouncer())
        elif name == "celery":
            contenders.append(peers.CeleryPeer())
        elif name == "dbos":
            try:
                contenders.append(peers.DbosPeer())
            except ImportError:
                notes.append(
                    "DBOS Transact is not installed: its peer is skipped "
                    "(pip install -r bench/requirements.txt)"
                )
                runner.log(notes[-1])
        else:
            raise SystemExit(
                f"unknown peer {name!r}; choose among ours, ours-sync, ours-pgbouncer, celery, dbos"
            )
    try:
        results = runner.run(sizes, args.workers, contenders, only)
    except KeyboardInterrupt:
        runner.log("interrupted: stopping the workers")
        procs.stop_all()
        return 130
    finally:
        procs.stop_all()
    elapsed = time.time() - started
    target_list = report.targets(results)
    document = {
        "mode": "quick" if args.quick else "full",
        "workers": args.workers,
        "sizes": sizes.__dict__,
        "machine": report.machine(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(elapsed, 1),
        "notes": notes,
        "results": results,
        "targets": target_list,
    }
    print()
    print(report.render(results, target_list))
    for note in notes:
        print(f"note: {note}")
    out = (
        config.ROOT / args.out
        if not args.out.startswith("/")
        else __import__("pathlib").Path(args.out)
    )
    report.write_json(out.with_suffix(".json"), document)
    try:
        m = document["machine"]
        title = (
            f"python -m bench{' --quick' if args.quick else ''}: {args.workers} workers each, "
            f"{m['cpus']} CPUs, {m['platform']}, {document['finished_at']}"
        )
        report.chart(out.with_suffix(".png"), results, title)
    except ImportError:
        print("note: matplotlib is not installed: no chart (pip install -r bench/requirements.txt)")
    print(f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.png')} in {elapsed:.0f} s")
    failures = report.failures(results)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


sys.exit(main(sys.argv[1:]))
