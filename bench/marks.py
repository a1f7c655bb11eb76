"""Side effects every peer's benchmark task performs the same way.

``mark`` inserts one row into ``bench_mark`` (a workload's "each writing one row") on a
per-process connection opened lazily, so a forked worker child opens its own.
``notify`` pushes a timestamp to a Redis list the driver blocks on, which times an
event to the millisecond without polling the database.
"""

import os
import time

import psycopg
import redis

from bench import config

_pid = None
_conn = None
_redis = None

SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_mark (
    id bigserial PRIMARY KEY,
    label text NOT NULL,
    key integer NOT NULL,
    t double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS bench_mark_label ON bench_mark (label, key);
CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, v integer NOT NULL);
"""


def connection() -> psycopg.Connection:
    """This process's autocommit connection to the bench database."""
    global _pid, _conn
    if _conn is None or _pid != os.getpid() or _conn.closed:
        _conn = psycopg.connect(config.MAIN_URL, autocommit=True)
        _pid = os.getpid()
    return _conn


def redis_client() -> redis.Redis:
    """This process's Redis client on the bench's Redis database."""
    global _redis
    if _redis is None:
        # No socket timeout: `wait` blocks in BLPOP longer than redis-py 8's default of 5 s.
        _redis = redis.Redis.from_url(config.REDIS_URL, socket_timeout=None)
    return _redis


def mark(label: str, key: int) -> float:
    """Record that ``key`` of ``label`` ran now; return the time (Unix seconds)."""
    now = time.time()
    connection().execute(
        "INSERT INTO bench_mark (label, key, t) VALUES (%s, %s, %s)", (label, key, now)
    )
    return now


def notify(channel: str, value: float | None = None) -> float:
    """Push ``value`` (default: now) onto the Redis list ``channel``; return it."""
    now = time.time() if value is None else value
    redis_client().rpush(config.NOTIFY_PREFIX + channel, repr(now))
    return now


def wait(channel: str, timeout: float = 60.0) -> float:
    """Block until a value arrives on ``channel``; return it."""
    got = redis_client().blpop([config.NOTIFY_PREFIX + channel], timeout=timeout)
    if got is None:
        raise TimeoutError(f"nothing arrived on {channel!r} within {timeout:.0f}s")
    return float(got[1])
