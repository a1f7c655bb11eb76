"""Worker processes the bench starts and stops itself, and their memory.

Each worker runs in a session of its own, so stopping it ends its whole process tree
(a Celery prefork parent and its children). Every process started here is recorded and
stopped on exit, also on Ctrl-C or SIGTERM.
"""

import atexit
import os
import signal
import subprocess
import threading
import time

import psutil

from bench import config

_started: list[subprocess.Popen] = []


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(config.ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def start(argv: list[str], **env: str) -> subprocess.Popen:
    """Start ``argv`` (a Python module and its arguments) as a worker of the bench."""
    log = open(config.RESULTS_DIR / "workers.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [config.PYTHON, *argv],
        cwd=config.ROOT,
        env=_env(**env),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop ``proc`` and its children: SIGTERM, then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
    except ProcessLookupError:
        pass
    proc.wait()
    if proc in _started:
        _started.remove(proc)


def stop_all() -> None:
    """Stop every worker the bench started and has not stopped yet."""
    for proc in list(_started):
        stop(proc, timeout=5.0)


atexit.register(stop_all)


def celery_worker(app: str, queue: str, concurrency: int, **env: str) -> subprocess.Popen:
    """A Celery worker of ``app`` on ``queue`` with ``concurrency`` prefork processes."""
    return start(
        [
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-Q",
            queue,
            "-n",
            f"{queue}-{os.getpid()}@%h",
            "-c",
            str(concurrency),
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "WARNING",
        ],
        **env,
    )


def rss(procs: list[subprocess.Popen]) -> int:
    """Resident memory of ``procs`` and all their descendants, in bytes."""
    total = 0
    for proc in procs:
        try:
            root = psutil.Process(proc.pid)
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return total


class MemorySampler:
    """Samples :func:`rss` of ``procs`` in a thread; ``peak`` is the highest seen."""

    def __init__(self, procs: list[subprocess.Popen], interval: float = 0.2) -> None:
        self.procs = procs
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.procs))
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss(self.procs))


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true (return ``True``) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
