"""Django system checks for configurations that cannot work."""

from typing import Any

from django.conf import settings
from django.core import checks
from django.db import connections

from workflows import conf, doorbell, registry

#: RabbitMQ closes a channel whose message stays unacknowledged this long (its default).
RABBITMQ_CONSUMER_TIMEOUT = 30 * 60


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn about timings the engine or the broker cannot honour."""
    messages: list[checks.CheckMessage] = []
    try:
        cfg = conf.get()
    except Exception as exc:
        return [checks.Error(str(exc), id="workflows.E001")]
    if cfg.HEARTBEAT_SECONDS >= cfg.LEASE_SECONDS:
        messages.append(
            checks.Error(
                "WORKFLOWS['HEARTBEAT_SECONDS'] must be shorter than LEASE_SECONDS, or "
                "every long step is taken over by a second worker",
                id="workflows.E002",
            )
        )
    if not 1 <= cfg.RING_BATCH_SIZE <= doorbell.MAX_RUN_IDS:
        messages.append(
            checks.Error(
                f"WORKFLOWS['RING_BATCH_SIZE'] is {cfg.RING_BATCH_SIZE}; it must be from 1 to "
                f"{doorbell.MAX_RUN_IDS} (workers drop longer messages as forged)",
                id="workflows.E003",
            )
        )
    hand_on = cfg.HAND_ON_SECONDS
    if isinstance(hand_on, bool) or not isinstance(hand_on, int | float) or not hand_on >= 0:
        messages.append(
            checks.Error(
                f"WORKFLOWS['HAND_ON_SECONDS'] is {hand_on!r}; it must be 0 or "
                "more (0: every run handed a concurrency slot is rung)",
                id="workflows.E006",
            )
        )
    if not (cfg.PREPARED_STATEMENTS is None or isinstance(cfg.PREPARED_STATEMENTS, bool)):
        messages.append(
            checks.Error(
                f"WORKFLOWS['PREPARED_STATEMENTS'] is {cfg.PREPARED_STATEMENTS!r}; it must be "
                "None (prepare unless DISABLE_SERVER_SIDE_CURSORS says a pooler is in "
                "front of PostgreSQL), True or False",
                id="workflows.E005",
            )
        )
    for alias, database in settings.DATABASES.items():
        options = database.get("OPTIONS") or {}
        if "postgresql" in database.get("ENGINE", "") and options.get("server_side_binding"):
            messages.append(
                checks.Error(
                    f"DATABASES[{alias!r}]['OPTIONS']['server_side_binding'] is True: the "
                    "engine sends statements of two commands (SET LOCAL …; UPDATE …), which "
                    "PostgreSQL refuses to prepare",
                    hint="Remove server_side_binding (Django's default is client-side binding).",
                    id="workflows.E004",
                )
            )
    broker = getattr(settings, "CELERY_BROKER_URL", "") or ""
    if isinstance(broker, list | tuple):  # failover URLs: the first one is tried first
        broker = broker[0] if broker else ""
    broker = str(broker).lower()
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}) or {}
    if broker.startswith(("redis", "rediss", "sentinel")):
        limit = float(options.get("visibility_timeout", 3600))
        if limit <= cfg.ETA_HORIZON_SECONDS:
            messages.append(
                checks.Warning(
                    f"WORKFLOWS['ETA_HORIZON_SECONDS'] ({cfg.ETA_HORIZON_SECONDS:g}s) is at "
                    f"or above the Redis visibility_timeout ({limit:g}s): Redis would "
                    "deliver delayed messages twice",
                    hint="Lower ETA_HORIZON_SECONDS; the database holds longer delays.",
                    id="workflows.W001",
                )
            )
    is_amqp = broker.startswith(("amqp", "pyamqp", "rabbitmq"))
    if is_amqp and cfg.ETA_HORIZON_SECONDS >= RABBITMQ_CONSUMER_TIMEOUT:
        messages.append(
            checks.Warning(
                f"WORKFLOWS['ETA_HORIZON_SECONDS'] ({cfg.ETA_HORIZON_SECONDS:g}s) is at "
                "or above RabbitMQ's default consumer_timeout (30 min)",
                hint="Lower ETA_HORIZON_SECONDS; the database holds longer delays.",
                id="workflows.W002",
            )
        )
    if cfg.ETA_HORIZON_SECONDS <= 2 * cfg.DISPATCH_INTERVAL_SECONDS:
        messages.append(
            checks.Warning(
                f"WORKFLOWS['ETA_HORIZON_SECONDS'] ({cfg.ETA_HORIZON_SECONDS:g}s) is not "
                f"above twice DISPATCH_INTERVAL_SECONDS ({cfg.DISPATCH_INTERVAL_SECONDS:g}s): "
                "a dispatcher pass may find a wake-up or deferred event only once it is "
                "due, and ring it late instead of on the broker's clock",
                hint="Keep ETA_HORIZON_SECONDS several dispatcher intervals long (default 10).",
                id="workflows.W004",
            )
        )
    accept = getattr(settings, "CELERY_ACCEPT_CONTENT", None) or ["json"]
    if any("pickle" in str(item) for item in accept):
        messages.append(
            checks.Warning(
                "CELERY_ACCEPT_CONTENT allows pickle: a message from the broker could run "
                "arbitrary code in the worker",
                hint="Use CELERY_ACCEPT_CONTENT = ['json'].",
                id="workflows.W003",
            )
        )
    return messages


@checks.register()
def check_flow_control(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Pools whose workflows disagree on the limit; SQLite that would not order claims."""
    messages: list[checks.CheckMessage] = []
    pools: dict[str, dict[int, list[str]]] = {}
    limited = False
    for wf in registry.all_workflows():
        for entry in wf.flow.concurrency:
            limited = True
            if entry.pool:
                pools.setdefault(entry.pool, {}).setdefault(entry.limit, []).append(wf.id)
    for pool, limits in sorted(pools.items()):
        if len(limits) > 1:
            said = "; ".join(
                f"{limit} by {', '.join(ids)}" for limit, ids in sorted(limits.items())
            )
            messages.append(
                checks.Warning(
                    f"concurrency pool {pool!r} has different limits: {said}; each run "
                    "is held to its own workflow's, so the pool has no single limit",
                    hint="Give every workflow naming the pool the same limit.",
                    id="workflows.W010",
                )
            )
    database = connections["default"].settings_dict
    immediate = (database.get("OPTIONS") or {}).get("transaction_mode") == "IMMEDIATE"
    if limited and database.get("ENGINE", "").endswith("sqlite3") and not immediate:
        messages.append(
            checks.Warning(
                "workflows with a concurrency limit on SQLite need transactions that take "
                "the write lock at once: two claims could otherwise both see a free slot "
                "or fail with 'database is locked'",
                hint="Set DATABASES['default']['OPTIONS']['transaction_mode'] = 'IMMEDIATE'.",
                id="workflows.W011",
            )
        )
    return messages
