"""W11: ``check_workflows`` over many active runs (the pre-deploy check of issue 17).

Seeds ``runs`` sleeping runs of a 20-memo workflow (19 ``step.run`` memos and the
sleep they are in) straight into the tables, then times ``manage.py check_workflows``
in this process: every run replayed against the code, nothing executed, nothing written.
"""

import io
import time
import uuid
from datetime import timedelta

#: Memos per seeded run (the last one is the sleep the run is in).
MEMOS = 20
WORKFLOW_ID = "bench-w11"


def _register() -> None:
    from workflows import registry

    if WORKFLOW_ID in {wf.id for wf in registry.all_workflows()}:
        return

    @registry.workflow(id=WORKFLOW_ID, trigger="bench/w11")
    def twenty_steps(ctx):
        """19 steps and a long sleep."""
        for i in range(MEMOS - 1):
            ctx.step.run(f"s{i}", int, i)
        ctx.step.sleep("nap", "30d")


def seed(runs: int) -> float:
    """Store ``runs`` sleeping runs with their memos; return the seconds it took."""
    from django.db import transaction
    from django.utils import timezone

    from eventbus import bus, validation
    from workflows import memo
    from workflows.models import RunStatus, StepKind, StepResult, StepStatus, WorkflowRun

    t0 = time.perf_counter()
    workspace = bus.get_workspace(None)
    now = timezone.now()
    wake = now + timedelta(days=30)
    for start in range(0, runs, 1000):
        count = min(1000, runs - start)
        with transaction.atomic():
            ids = bus.store(
                [validation.event("bench/w11", {"i": start + n}) for n in range(count)],
                workspace,
                deliver=False,
            )
            rows = [
                WorkflowRun(
                    id=uuid.uuid4(),
                    workspace=workspace,
                    workflow_id=WORKFLOW_ID,
                    event_id=event_id,
                    status=RunStatus.SLEEPING,
                    wake_at=wake,
                    due_at=wake,
                    started_at=now,
                    created_at=now,
                )
                for event_id in ids
            ]
            WorkflowRun.objects.bulk_create(rows, batch_size=1000)
            memos = []
            for run in rows:
                for i in range(MEMOS - 1):
                    memos.append(
                        StepResult(
                            run=run, step_id=f"s{i}", key=memo.key_for(f"s{i}"), position=i,
                            kind=StepKind.RUN, status=StepStatus.COMPLETED, output=i,
                            started_at=now, finished_at=now,
                        )
                    )  # fmt: skip
                memos.append(
                    StepResult(
                        run=run, step_id="nap", key=memo.key_for("nap"), position=MEMOS - 1,
                        kind=StepKind.SLEEP, status=StepStatus.SLEEPING, wake_at=wake,
                        started_at=now,
                    )
                )  # fmt: skip
            StepResult.objects.bulk_create(memos, batch_size=2000)
    return time.perf_counter() - t0


def w11(runs: int) -> dict:
    """Seed ``runs`` active runs of 20 memos; time ``check_workflows`` over them."""
    from django.core.management import call_command

    _register()
    seed_s = seed(runs)
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    call_command("check_workflows", stdout=out, stderr=err)
    check_s = time.perf_counter() - t0
    if f"All {runs} active run(s) fit" not in out.getvalue():
        raise RuntimeError(f"check_workflows did not pass every run: {out.getvalue()[-500:]}")
    return {
        "runs": runs,
        "memos": runs * MEMOS,
        "seed_seconds": seed_s,
        "check_seconds": check_s,
        "runs_per_second": runs / check_s if check_s else None,
    }
