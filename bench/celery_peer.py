"""The plain Celery peer: the same work as bench tasks on the same Redis broker.

Not durable: nothing but the broker remembers a task. A Celery app of its own (not
Django's), which never becomes the current app, so it cannot capture the engine's tasks.
"""

from celery import Celery

from bench import config, marks

app = Celery("bench_peer", broker=config.REDIS_URL, set_as_current=False)
app.conf.update(
    task_default_queue=config.CELERY_QUEUE,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 3600},
)


@app.task(name="bench.noop")
def noop(i: int) -> int:
    """W1: a trivial link of a chain."""
    return i


@app.task(name="bench.notify")
def notify(channel: str) -> float:
    """W1 (end of a chain), W3 and warm-up: notify the driver that this task started."""
    return marks.notify(channel)


@app.task(name="bench.fanout")
def fanout(label: str, n: int) -> int:
    """W2: publish ``n`` one-row tasks from inside a worker (as the others fan out)."""
    for k in range(n):
        mark.apply_async((label, k))
    return n


@app.task(name="bench.mark")
def mark(label: str, key: int) -> float:
    """W2 and W4: write one row."""
    return marks.mark(label, key)
