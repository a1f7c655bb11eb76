"""W9: the dispatcher's schedule pass with 10,000 schedules against none.

``python -m bench.schedules [--schedules N]`` against the database of ``DATABASE_URL``
(the example project's settings): inside one transaction that is rolled back at the
end (nothing is left behind), it times :func:`workflows.firing.fire_due`

- with no schedules (the idle pass);
- with N schedules, none due (the idle pass must not grow: one indexed query);
- at a minute boundary where half of them (every minute) are due: the work there is
  proportional to the due slots (one event and one run each), reported per slot.
"""

import argparse
import os
import statistics
import time
from datetime import timedelta


def _time_idle(passes: int = 200) -> float:
    from workflows import firing

    samples = []
    for _ in range(passes):
        t0 = time.perf_counter()
        firing.fire_due(500)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def main() -> None:
    """Print the W9 figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=10_000)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.settings")
    import django

    django.setup()
    from django.db import connection, transaction
    from django.utils import timezone

    from eventbus import bus
    from workflows import firing, registry
    from workflows.models import Schedule, ScheduleSource

    if "bench-w9" not in {wf.id for wf in registry.all_workflows()}:
        registry.workflow(id="bench-w9")(lambda ctx: None)

    class Rollback(Exception):
        pass

    try:
        with transaction.atomic():
            Schedule.objects.all().delete()
            idle_none = _time_idle()
            workspace = bus.get_workspace(None)
            now = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=1)
            rows = [
                Schedule(
                    schedule_id=f"w9-{i}",
                    workflow_id="bench-w9",
                    cron="* * * * *" if i % 2 else "0 3 * * *",
                    workspace=workspace,
                    source=ScheduleSource.DATABASE,
                    next_fire_at=now if i % 2 else now + timedelta(hours=6),
                )
                for i in range(args.schedules)
            ]
            Schedule.objects.bulk_create(rows, batch_size=1000)
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:  # plan with the rows just added
                    cursor.execute("ANALYZE workflows_schedule")
            idle_many = _time_idle()
            t0 = time.perf_counter()
            fired = 0
            while count := firing.fire_due(500, now=now):
                fired += count
            burst = time.perf_counter() - t0
            raise Rollback
    except Rollback:
        pass
    print(f"W9: idle schedule pass with 0 schedules: {idle_none:.3f} ms (median)")
    print(f"W9: idle schedule pass with {args.schedules} schedules: {idle_many:.3f} ms")
    print(
        f"W9: minute boundary, {fired} due: {burst:.2f} s, "
        f"{burst / max(fired, 1) * 1000:.2f} ms per slot (event + run + claim)"
    )


if __name__ == "__main__":
    main()
