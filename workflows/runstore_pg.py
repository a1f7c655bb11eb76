"""The engine's PostgreSQL fast paths: the claim, a step's memo, the end of a run, and
the statements of ``send`` and of the hand-over that every run pays.

Each is one statement (or a lock and a statement, in one round trip), built once per
process from the models (and, for the claim, from the one definition of "runnable" in
:mod:`workflows.models`): a claim is one ``UPDATE … RETURNING`` joined with the run's
event and workspace, a step's memo is one ``INSERT … SELECT … FOR SHARE`` that writes
only while the run is still ours, and the end of a run is one raw ``UPDATE`` that
spares the ORM's compilation, or, when nothing listens for its ``run.finished``, a lock
and one statement that write the end, the event, the last memo and the hand-over of a
concurrency slot together (:func:`finish_with_event`). Those that are their own
transaction are prepared once per connection (:func:`execute_prepared`), a lock and its
statement as a pipeline of two (:func:`_after_lock`). Called by the run store, the
lifecycle, the waits, the slots and the subscribers, and only on PostgreSQL.
"""

import contextlib
import functools
import logging
import uuid
import weakref
from datetime import UTC, datetime
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper

from workflows import conf, models
from workflows.models import RunStatus, StepResult, StepStatus, WorkflowRun

logger = logging.getLogger(__name__)

#: Prefix of a statement whose transaction need not wait for the disk at commit. Safe
#: for a claim and for the end of a run: a crash of PostgreSQL can only lose them
#: whole, and only if nothing committed after them reached the disk (the log is
#: flushed in order, and every memo is a synchronous commit). A lost claim leaves the
#: run to be rung and claimed again; a lost end leaves it running with an expired
#: lease, so it is resumed, replays its memos and ends again. Either saves a disk flush.
RELAXED = "SET LOCAL synchronous_commit TO OFF; "
#: The same setting for a statement that sets it itself (``set_config`` in a CTE, see
#: ``_relaxed_cte``); read when such a statement is first built. The bench's
#: fully-synchronous row sets both to ``on``.
RELAXED_COMMIT = "off"

#: A time no caller passes: marks where "now" goes when a condition is compiled once.
_NOW_MARK = datetime(1970, 1, 1, 0, 0, 0, 424242, tzinfo=UTC)


def relax() -> None:
    """In a transaction: let it commit without waiting for the disk (see ``RELAXED``)."""
    with connection.cursor() as cursor:
        cursor.execute(RELAXED.rstrip("; "))


def next_result(cursor: Any) -> None:
    """Move to the result of the next statement of a message of several (after
    ``RELAXED``, after a lock); psycopg 2 shows only the last one, so it is there."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3  # PostgreSQL only

    if is_psycopg3:
        cursor.cursor.nextset()


def bound_cursor(conn: Any, *, prepare: bool = False) -> Any:
    """A cursor of ``conn`` that sends the parameters apart from the statement
    (server-side binding): none of the quoting of each value in Python that Django's
    client-side cursors do (a fifth of a step's time).

    With ``prepare`` (and :func:`prepares` allowing it), the statement is prepared on
    the connection the first time and executed by name after that, which spares
    PostgreSQL planning it again (a third of a step's time); otherwise nothing is
    prepared. The cursor is kept for the connection (psycopg then reuses what it
    learnt of the parameter types), so do not close it. psycopg 2: a plain cursor."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3  # PostgreSQL only

    if not is_psycopg3:
        return conn.cursor()
    prepare = prepare and prepares(conn)
    _ready(conn, prepare=prepare)
    raw = _kept_cursor(conn, prepare)
    return _LoggedCursor(raw, conn) if conn.queries_logged else conn.make_cursor(raw)


def _ready(conn: Any, *, prepare: bool) -> None:
    """Connect ``conn`` if need be, checked for this thread as ``conn.cursor()`` does;
    with ``prepare``, let psycopg prepare what the engine asks it to."""
    conn.validate_thread_sharing()
    conn.ensure_connection()
    if prepare and conn.connection.prepare_threshold is None:
        # psycopg prepares nothing on a connection without a threshold, not even what
        # is asked for; this one is never reached by the statements nobody asks for.
        conn.connection.prepare_threshold = ONLY_WHEN_ASKED


def _kept_cursor(conn: Any, key: Any) -> Any:
    """The psycopg cursor kept for ``conn`` under ``key``: ``False``, one that prepares
    nothing; ``True`` or another key, one that prepares what it runs."""
    kept = _kept.setdefault(conn.connection, {})
    raw = kept.get(key)
    if raw is None or raw.closed:
        with conn.wrap_database_errors:
            raw = kept[key] = _cursor_classes()[key is not False](conn.connection)
        _load_timestamps_in_c(raw)
    return raw


def _load_timestamps_in_c(raw: Any) -> None:
    """Let ``raw`` (a kept cursor) read ``timestamptz`` columns with Python's C parser
    of ISO dates, where Django's loader parses them in Python (a claimed run, its event
    and workspace have 13; a third of the claim's Python was this). The value is the
    one Django's loader gives: the wall time PostgreSQL printed in the session's time
    zone, with Django's time zone; a value the C parser refuses (another ``DateStyle``,
    a BC date, an infinity, a year past 9999) goes to Django's loader as before."""
    from django.db.backends.postgresql.psycopg_any import BaseTzLoader
    from psycopg.pq import Format

    adapters = raw.adapters
    info = adapters.types.get("timestamptz")
    base = adapters.get_loader(info.oid, Format.TEXT) if info is not None else None
    if base is not None and issubclass(base, BaseTzLoader):
        adapters.register_loader("timestamptz", _iso_loader(base))


@functools.cache
def _iso_loader(base: type) -> type:
    class IsoTimestamptzLoader(base):  # type: ignore[misc, valid-type]
        def load(self, data: Any) -> Any:
            try:
                value = datetime.fromisoformat(bytes(data).decode())
            except ValueError:
                return super().load(data)
            return value.replace(tzinfo=self.timezone)

    return IsoTimestamptzLoader


#: The ``prepare_threshold`` the engine gives a connection it prepares on, when Django
#: left it ``None``: psycopg then prepares the statements the engine asks it to, and no
#: other statement by itself (none is executed this many times).
ONLY_WHEN_ASKED = 2**62

#: Set when a prepared statement went missing on its connection (a pooler in
#: transaction mode that nobody told Django about): this process prepares no more.
_missing: list[str] = []


def prepares(conn: Any) -> bool:
    """Whether the engine prepares its hot statements on ``conn``.

    ``WORKFLOWS['PREPARED_STATEMENTS']``; when ``None`` (the default), yes unless the
    database is set up for a pooler in transaction mode: Django's documented setting
    for that, ``DISABLE_SERVER_SIDE_CURSORS``, is true there, and such a pooler may run
    the next statement on a server session that has not seen it prepared. A process
    that saw a prepared statement go missing prepares no more.
    """
    setting = conf.get().PREPARED_STATEMENTS
    if setting is None:
        setting = not conn.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
    return setting and not _missing


def on_its_own(conn: Any) -> bool:
    """Whether a statement executed on ``conn`` now is a transaction of its own: no
    atomic block is open and Django manages the commits (``set_autocommit(False)``
    opens a transaction without an atomic block, which nothing here may prepare in,
    relax or commit)."""
    return not conn.in_atomic_block and conn.get_autocommit()


def execute_prepared(conn: Any, sql: str, params: Any) -> Any:
    """Execute ``sql`` (one command) on a kept cursor of ``conn`` and return the cursor:
    prepared where :func:`prepares` allows and ``conn`` is in no transaction; inside
    one, with the parameters bound by the server but nothing prepared.

    Only a statement that is its own transaction can be retried: one PostgreSQL says is
    not prepared (another server session behind a pooler, a ``DEALLOCATE`` psycopg did
    not see) did nothing, so it is executed again unprepared, and this process stops
    preparing, with a warning saying what to set. Inside a transaction the error would
    lose the caller's transaction (an event's ``send``), hence nothing prepared there."""
    prepare = on_its_own(conn)
    cursor = bound_cursor(conn, prepare=prepare)
    if not prepare:
        cursor.execute(sql, params)
        return cursor
    try:
        cursor.execute(sql, params)
    except DatabaseError as exc:
        _lost_prepared(conn, exc)
        cursor = bound_cursor(conn)
        cursor.execute(sql, params)
    return cursor


def _lost_prepared(conn: Any, exc: DatabaseError) -> None:
    """Re-raise ``exc`` unless PostgreSQL says a prepared statement is missing (26000,
    invalid_sql_statement_name); if it is, prepare no more in this process, and say why
    (the statement did nothing: its caller executes it again, unprepared)."""
    if getattr(exc.__cause__, "sqlstate", None) != "26000":
        raise exc
    _missing.append(str(exc.__cause__))
    conn.connection.prepare_threshold = None  # what psycopg prepared is forgotten
    logger.warning(
        "PostgreSQL lost a statement the engine had prepared (%s): a pooler in "
        "transaction mode is likely in front of it. This process prepares no more; "
        "set DATABASES[...]['DISABLE_SERVER_SIDE_CURSORS'] = True (as Django asks for "
        "such a pooler) or WORKFLOWS['PREPARED_STATEMENTS'] = False",
        exc.__cause__,
    )


def _pipelines(conn: Any) -> bool:
    """Whether a lock and the statement after it go to ``conn`` as a pipeline of two
    prepared statements (:func:`_after_lock`): psycopg 3 with pipeline support, where
    the engine prepares (:func:`prepares`), outside a transaction."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3  # PostgreSQL only

    if not is_psycopg3 or not on_its_own(conn) or not prepares(conn):
        return False
    return _pipeline_supported()


@functools.cache
def _pipeline_supported() -> bool:
    """Whether psycopg's libpq supports pipelines (asked once)."""
    import psycopg

    return psycopg.Pipeline.is_supported()


class _LoggedCursor(CursorDebugWrapper):
    """Django's cursor that logs queries (``DEBUG``, ``CaptureQueriesContext``), logging
    the statement as written: psycopg keeps no text of one executed by name."""

    def execute(self, sql: str, params: Any = None) -> Any:
        with self.debug_sql(sql, params):
            return CursorWrapper.execute(self, sql, params)


_classes: tuple[type, type] | None = None
#: Each connection's kept cursors (see :func:`_kept_cursor`).
_kept: "weakref.WeakKeyDictionary[Any, dict[Any, Any]]" = weakref.WeakKeyDictionary()


def _cursor_classes() -> tuple[type, type]:
    """Django's server-binding cursor that prepares nothing, and one that prepares what
    it runs."""
    global _classes
    if _classes is None:
        from django.db.backends.postgresql.base import ServerBindingCursor

        class PlainCursor(ServerBindingCursor):
            """Prepares nothing, and executes by name nothing a cursor of the other kind
            prepared on the connection (psycopg's ``prepare=False``)."""

            def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
                kwargs["prepare"] = False
                return super().execute(query, params, **kwargs)

        class PreparingCursor(ServerBindingCursor):
            """Prepares every statement it executes (psycopg's ``prepare=True``)."""

            def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
                kwargs["prepare"] = True
                return super().execute(query, params, **kwargs)

        _classes = (PlainCursor, PreparingCursor)
    return _classes


def _compact(sql: str) -> str:
    """``sql`` without its indentation and empty lines. psycopg keeps the parsed form of
    a statement of at most ``MAX_CACHED_STATEMENT_LENGTH`` bytes (4096) with at most
    ``MAX_CACHED_STATEMENT_PARAMS`` parameters (50), and parses a longer one again at
    every execution (a fifth of a claim's time in Python when the claim was longer):
    the engine's statements stay within both (``tests/test_prepared_statements.py``)."""
    return "\n".join(line.strip() for line in sql.splitlines() if line.strip())


def _column_list(fields: list[Any]) -> str:
    return ", ".join(f'"{f.column}"' for f in fields)


def _casts(fields: list[Any], prefix: str) -> str:
    """The named parameters ``%(<prefix><n>)s`` of ``fields``, each cast to its column's
    type (a value of an ``INSERT … SELECT`` has no column to take its type from)."""
    return ", ".join(
        f"CAST(%({prefix}{n})s AS {f.cast_db_type(connection)})" for n, f in enumerate(fields)
    )


def _named(values: list[Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{n}": value for n, value in enumerate(values)}


def _memo_fields() -> list[Any]:
    """The fields a memo's ``INSERT`` writes (all but its id, which the table makes)."""
    return [f for f in StepResult._meta.concrete_fields if not f.primary_key]


def _db() -> Any:
    """This thread's connection to the default database, looked up once (the
    ``connection`` proxy looks it up again at every attribute it is asked for)."""
    return connections[DEFAULT_DB_ALIAS]


def _after_lock(locks: str, sql: str, params: dict[str, Any]) -> tuple:
    """Execute ``locks`` (a ``SELECT`` taking advisory locks), then ``sql``, whose
    snapshot is taken after the locks are granted, as one transaction in one round trip;
    return the first row of ``sql``. ``params``: the parameters of both, by name.

    Outside a transaction where the engine prepares (:func:`_pipelines`): a pipeline of
    the two statements, each prepared once per connection and bound by the server,
    with one ``Sync`` after them, so that PostgreSQL runs them as one implicit
    transaction (the locks are held until it commits). Otherwise one message of both
    commands, quoted by the client and planned at every execution."""
    conn = _db()
    if _pipelines(conn):
        try:
            return _pipelined(conn, locks, sql, params)
        except DatabaseError as exc:
            _lost_prepared(conn, exc)  # nothing was done: send it the other way
    with conn.cursor() as cursor:
        cursor.execute(f"{locks};\n{sql}", params)
        next_result(cursor)  # past the locks
        return cursor.fetchone()


def _pipelined(conn: Any, locks: str, sql: str, params: dict[str, Any]) -> tuple:
    _ready(conn, prepare=True)
    lock_cursor, cursor = _kept_cursor(conn, "locks"), _kept_cursor(conn, True)
    logged = _LoggedCursor(cursor, conn) if conn.queries_logged else None
    with (
        logged.debug_sql(f"{locks};\n{sql}", params)
        if logged is not None
        else contextlib.nullcontext()
    ):
        with conn.wrap_database_errors, conn.connection.pipeline():
            lock_cursor.execute(locks, params)
            cursor.execute(sql, params)
        return cursor.fetchone()


def _columns(model: type, alias: str) -> str:
    return ", ".join(f'{alias}."{f.column}"' for f in model._meta.concrete_fields)


def _loader(model: type) -> Any:
    """Turn a slice of a raw row into an instance of ``model``, as the ORM would."""
    fields = model._meta.concrete_fields
    names = [f.attname for f in fields]
    converters = [
        (i, fn, f)
        for i, f in enumerate(fields)
        for fn in connection.ops.get_db_converters(f.get_col(model._meta.db_table))
        + f.get_db_converters(connection)
    ]

    def load(values: tuple) -> Any:
        values = list(values)
        conn = _db()
        for i, fn, f in converters:
            values[i] = fn(values[i], f, conn)
        return model.from_db(conn.alias, names, values)

    return load


def _compiled_condition(condition: Any) -> tuple[str, dict[str, Any]]:
    """SQL of a ``Q`` over runs with ``%(now)s`` where its time goes, and its constants.

    ``condition`` is a function of the time (such as :func:`workflows.models.runnable`);
    it is compiled by the ORM once, so the raw statement and the ORM agree on it.
    """
    query = WorkflowRun.objects.filter(condition(_NOW_MARK)).query
    sql, params = query.get_compiler(connection=connection).compile(query.where)
    pieces = sql.split("%s")
    assert len(pieces) == len(params) + 1, "a condition with a literal % sign"
    out, constants = [pieces[0]], {}
    for index, (param, piece) in enumerate(zip(params, pieces[1:], strict=True)):
        if param == _NOW_MARK:
            out.append("%(now)s")
        else:
            constants[f"c{index}"] = param
            out.append(f"%(c{index})s")
        out.append(piece)
    return "".join(out), constants


_claim_sql: dict[tuple[str, bool], tuple[str, dict[str, Any], Any, Any, Any]] = {}


def _relaxed_cte() -> str:
    """``RELAXED`` as a part of a statement itself (a CTE named ``relaxed``), for a
    statement that is its own transaction: a statement of one command can be prepared
    (``SET LOCAL …; UPDATE …`` cannot). The setting is read at commit, so where in the
    transaction it is set does not matter; a statement that writes nothing has nothing
    to flush."""
    return (
        f"relaxed AS (SELECT set_config('synchronous_commit', '{RELAXED_COMMIT}', true) AS value), "
    )


#: How a claim of a run in a concurrency group checks one group's room: its running
#: runs with a live lease, other than this one, must be fewer than the limit. Counted by
#: the claim statement itself, after the caller took the group's lock, so the count
#: sees every claim of the group that committed before.
_ROOM = """(%(g{n})s = '' OR (
    SELECT count(*) FROM "{runs}" AS r
    WHERE (r.slot_1 = %(g{n})s OR r.slot_2 = %(g{n})s) AND r.status = '{running}'
        AND r.lease_expires_at >= %(now)s AND r.id <> %(id)s
) < %(l{n})s)"""


def _claim_statement(kind: str, relaxed: bool = False) -> tuple[str, dict[str, Any], Any, Any, Any]:
    """Claim the run, close the sleeps that ended, read run, event and workspace, and
    whether the run had never started; if it was not claimed, what flow control asks of
    it (``models.SHAPING_FIELDS``) and whether flow control may hold it back.

    ``"free"``: only a run no flow control may hold back
    (:func:`workflows.models.unshaped`); ``"admitted"``: a run in concurrency groups, if
    each has room (see ``_ROOM``). A run that ``"free"`` does not claim is either not
    runnable (a late or repeated message) or held back by flow control: the statement
    says which it may be, from the row as its snapshot saw it (a hint: the claim that
    follows checks again). ``relaxed``: the statement commits without waiting for the
    disk (``_relaxed_cte``), for a claim outside a transaction.
    """
    if (kind, relaxed) not in _claim_sql:
        event_model = WorkflowRun._meta.get_field("event").related_model
        workspace_model = WorkflowRun._meta.get_field("workspace").related_model
        runs = WorkflowRun._meta.db_table
        if kind == "free":
            condition = lambda now: models.runnable(now) & models.unshaped(now)  # noqa: E731
        else:
            condition = models.runnable
        runnable, constants = _compiled_condition(condition)
        unshaped, more = _compiled_condition(models.unshaped)
        constants.update({f"u{key}": value for key, value in more.items()})
        unshaped = unshaped.replace("%(c", "%(uc")
        if kind == "admitted":
            room = " AND ".join(
                _ROOM.format(n=n, runs=runs, running=RunStatus.RUNNING) for n in (1, 2)
            )
            runnable = f"({runnable}) AND {room}"
        shaping = [WorkflowRun._meta.get_field(f).column for f in models.SHAPING_FIELDS]
        sql = f"""
        WITH {_relaxed_cte() if relaxed else ""}old AS (
            SELECT status AS old_status, started_at AS old_started,
                {", ".join(f'"{c}" AS "h_{c}"' for c in shaping)},
                ({unshaped}) IS NOT TRUE AS held_back
            FROM "{runs}" WHERE id = %(id)s
        ), claimed AS (
            UPDATE "{runs}"
            SET status = '{RunStatus.RUNNING}', lease_owner = %(token)s,
                lease_expires_at = %(lease)s, due_at = %(lease)s, wake_at = NULL, held_by = '',
                started_at = COALESCE("{runs}".started_at, %(now)s),
                lost_executions = "{runs}".lost_executions
                    + CASE WHEN "{runs}".status = '{RunStatus.RUNNING}' THEN 1 ELSE 0 END
            FROM old
            WHERE "{runs}".id = %(id)s AND ({runnable})
            RETURNING {_column_list(WorkflowRun._meta.concrete_fields)}, old_status, old_started
        ), closed AS (
            UPDATE "{StepResult._meta.db_table}"
            SET status = '{StepStatus.COMPLETED}', finished_at = %(now)s
            WHERE run_id IN (
                SELECT id FROM claimed
                WHERE NOT (old_status = '{RunStatus.QUEUED}' AND old_started IS NULL)
            ) AND status = '{StepStatus.SLEEPING}' AND wake_at <= %(now)s
        )
        SELECT claimed.*, {_columns(event_model, "e")}, {_columns(workspace_model, "w")},
            {", ".join(f'old."h_{c}"' for c in shaping)}, old.held_back
        FROM old{" CROSS JOIN relaxed" if relaxed else ""} LEFT JOIN claimed ON true
        LEFT JOIN "{event_model._meta.db_table}" AS e ON e.id = claimed.event_id
        LEFT JOIN "{workspace_model._meta.db_table}" AS w ON w.id = claimed.workspace_id"""
        _claim_sql[kind, relaxed] = (
            _compact(sql),
            constants,
            _loader(WorkflowRun),
            _loader(event_model),
            _loader(workspace_model),
        )
    return _claim_sql[kind, relaxed]


def claim(
    run_id: Any, token: str, now: datetime, lease: datetime
) -> tuple[WorkflowRun | None, dict[str, Any] | None]:
    """The claim as one statement: the run with its event and workspace, if it is
    runnable and no flow control may hold it back; else ``None`` and, if flow control
    may hold it back, what the claim of such a run asks (its ``id`` and
    ``models.SHAPING_FIELDS``, as the statement saw them)."""
    conn = _db()
    alone = on_its_own(conn)
    sql, constants, *loaders = _claim_statement("free", alone)
    params = {**constants, "id": run_id, "token": token, "now": now, "lease": lease}
    if alone:  # its own transaction: prepared, like a memo insert (planning took 0.4 ms)
        row = execute_prepared(conn, sql, params).fetchone()
    else:
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
    if row is None:
        return None, None
    run = _loaded(row, *loaders)
    if run is not None or not row[-1]:
        return run, None
    shaping = row[-1 - len(models.SHAPING_FIELDS) : -1]
    return None, {"id": run_id, **dict(zip(models.SHAPING_FIELDS, shaping, strict=True))}


def claim_admitted(
    run_id: Any,
    token: str,
    now: datetime,
    lease: datetime,
    limits: list[tuple[str, int]],
    lock_keys: list[int],
) -> WorkflowRun | None:
    """Take the advisory locks ``lock_keys`` (the groups'), then claim a run in
    concurrency groups if each of ``limits`` (group, limit) has room; ``None`` if not
    (or if the run is not runnable), the locks still held if in a transaction. The
    transaction commits without waiting for the disk (``RELAXED``). One round trip
    (:func:`_after_lock`): the locks, then the claim, whose snapshot is taken after
    them."""
    sql, constants, load_run, load_event, load_workspace = _claim_statement("admitted", True)
    (g1, l1), (g2, l2) = (list(limits) + [("", 0), ("", 0)])[:2]
    locks = ", ".join(f"pg_advisory_xact_lock(%(k{n})s)" for n in range(len(lock_keys)))
    params = {
        **constants,
        **{"id": run_id, "token": token, "now": now, "lease": lease},
        **{"g1": g1, "l1": l1, "g2": g2, "l2": l2},
        **{f"k{n}": key for n, key in enumerate(lock_keys)},
    }
    row = _after_lock(f"SELECT {locks or 1}", sql, params)
    return None if row is None else _loaded(row, load_run, load_event, load_workspace)


_shaped_sql: dict[tuple[str, ...], tuple[str, dict[str, Any]]] = {}


def shaped(run_id: Any, now: datetime, fields: tuple[str, ...]) -> dict[str, Any] | None:
    """``fields`` of the run if it is runnable and flow control may hold it back (the
    question the claim asks when ``"free"`` did not claim it); else ``None``.

    One statement compiled once per process from the same conditions as the claim (and
    prepared once per connection, see :func:`execute_prepared`), instead of an ORM query
    compiled and planned for every run a concurrency slot was handed to.
    """
    if fields not in _shaped_sql:
        runs = WorkflowRun._meta.db_table
        condition, constants = _compiled_condition(
            lambda now: models.runnable(now) & ~models.unshaped(now)
        )
        columns = ", ".join(f'"{runs}"."{WorkflowRun._meta.get_field(f).column}"' for f in fields)
        sql = f'SELECT {columns} FROM "{runs}" WHERE "{runs}"."id" = %(id)s AND ({condition})'
        _shaped_sql[fields] = (sql, constants)
    sql, constants = _shaped_sql[fields]
    row = execute_prepared(_db(), sql, {**constants, "id": run_id, "now": now}).fetchone()
    return None if row is None else dict(zip(fields, row, strict=True))


def _head() -> tuple[str, dict[str, Any]]:
    """The CTE ``head``: the next run in the line of a group (queued, ``held_by``
    starting with ``%(prefix)s``, ``slot_1`` = ``%(group)s``, by ``order_at``; not
    ``%(skip)s``, not before ``%(after)s``), its row locked, one locked by another
    hand-over skipped; and the constants of its condition."""
    runs = WorkflowRun._meta.db_table
    not_paused, constants = _compiled_condition(lambda now: models.not_paused())
    sql = f"""head AS (
        SELECT "{runs}"."id" FROM "{runs}"
        WHERE "{runs}"."slot_1" = %(group)s AND "{runs}"."status" = '{RunStatus.QUEUED}'
            AND "{runs}"."held_by" LIKE %(prefix)s
            AND ("{runs}"."wake_at" IS NULL OR "{runs}"."wake_at" <= %(now)s)
            AND ({not_paused})
            AND (%(skip)s::uuid IS NULL OR "{runs}"."id" <> %(skip)s::uuid)
            AND (%(after)s::timestamptz IS NULL OR "{runs}"."order_at" >= %(after)s)
        ORDER BY "{runs}"."order_at", "{runs}"."id"
        LIMIT 1
        FOR UPDATE OF "{runs}" SKIP LOCKED
    )"""
    return sql, constants


def _head_params(line: Any, due: datetime, skip: Any = None, after: Any = None) -> dict[str, Any]:
    """The parameters of ``_head`` and of the ``UPDATE`` that hands ``line``'s slot on
    (a :class:`workflows.slots.Line`), but ``now``."""
    return {
        **{"group": line.group, "prefix": _like_prefix(line.waiting)},
        **{"due": due, "skip": skip, "after": after},
    }


#: The update that hands the slot to the run ``head`` chose (see ``_head``), returning
#: its id and what its claim reads (``models.SHAPING_FIELDS``, in ``_HANDED_FIELDS``).
_HANDED = """UPDATE "{runs}" SET "due_at" = %(due)s, "held_by" = ''
    FROM head{also} WHERE "{runs}"."id" = head."id"
    RETURNING {returning}
"""
_HANDED_FIELDS = ("id", *models.SHAPING_FIELDS)


def _handed(also: str = "") -> str:
    runs = WorkflowRun._meta.db_table
    returning = ", ".join(
        f'"{runs}"."{WorkflowRun._meta.get_field(f).column}"' for f in _HANDED_FIELDS
    )
    return _HANDED.format(runs=runs, also=also, returning=returning)


def _handed_row(row: tuple | None) -> dict[str, Any] | None:
    return None if row is None or row[0] is None else dict(zip(_HANDED_FIELDS, row, strict=True))


_hand_over_sql: tuple[str, dict[str, Any]] | None = None


def hand_over(
    line: Any, now: datetime, due: datetime, skip: Any, after: Any
) -> dict[str, Any] | None:
    """Take the lock of ``line`` (a :class:`workflows.slots.Line`), then hand its free
    slot to the next run in it (``_head``): clear its ``held_by`` and set its ``due_at``
    to ``due``. Return its ``id`` and ``models.SHAPING_FIELDS``, or ``None`` if none
    waits. One round trip (:func:`_after_lock`): the lock, then the statement that
    reads the line, whose snapshot is taken after the lock (as
    :func:`workflows.slots.hand_over` requires).
    """
    global _hand_over_sql
    if _hand_over_sql is None:
        head, constants = _head()
        _hand_over_sql = (_compact(f"WITH {head}\n{_handed()}"), constants)
    sql, constants = _hand_over_sql
    params = {**constants, **_head_params(line, due, skip, after), "key": line.lock_key, "now": now}
    return _handed_row(_after_lock("SELECT pg_advisory_xact_lock(%(key)s)", sql, params))


def _like_prefix(prefix: str) -> str:
    """A ``LIKE`` pattern of the strings that start with ``prefix``."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _loaded(row: tuple, load_run: Any, load_event: Any, load_workspace: Any) -> WorkflowRun | None:
    """The claimed run from a claim's row (run, whether it had started, event,
    workspace, then what ``old`` saw), or ``None`` if the row claimed nothing."""
    n_run = len(WorkflowRun._meta.concrete_fields)
    if row[0] is None:
        return None
    n_event = len(WorkflowRun._meta.get_field("event").related_model._meta.concrete_fields)
    n_workspace = len(WorkflowRun._meta.get_field("workspace").related_model._meta.concrete_fields)
    old_status, old_started = row[n_run : n_run + 2]
    at = n_run + 2
    run = load_run(row[:n_run])
    run.event = load_event(row[at : at + n_event])
    run.workspace = load_workspace(row[at + n_event : at + n_event + n_workspace])
    # Queued and never started before this claim: the run has stored no memo yet.
    run.first_start = old_status == RunStatus.QUEUED and old_started is None
    return run


_insert_sql: tuple[str, list] | None = None


_run_insert_sql: dict[bool, tuple[str, list[Any]]] = {}


def _insert_values(instance: Any, fields: list[Any], conn: Any) -> list[Any]:
    """The values of ``fields`` of ``instance`` as the ORM's ``INSERT`` writes them.

    ``fields`` is one of the lists the statements above keep; each field's way of
    preparing its value is chosen once per list (:func:`_preparer`).
    """
    kept = _preparers.get(id(fields))
    if kept is None or kept[0] is not fields:
        kept = (fields, [_preparer(f) for f in fields])
        if len(_preparers) < 64:  # the statements' lists, not lists made per call
            _preparers[id(fields)] = kept
    return [prepare(instance, conn) for prepare in kept[1]]


#: ``id`` of a list of fields -> (that list, a preparer of each of its fields).
_preparers: dict[int, tuple[list[Any], list[Any]]] = {}


@functools.cache
def _plain_kinds() -> dict[type, str]:
    """Field classes whose ``get_db_prep_save`` passes a value of the kind named on to
    the database as it is (text, date-time, uuid, an auto field's int) or only typed for
    it (integer), on PostgreSQL (exact classes: a subclass may prepare its own way)."""
    from django.db import models as db

    integers = (
        db.IntegerField,
        db.BigIntegerField,
        db.SmallIntegerField,
        db.PositiveIntegerField,
        db.PositiveBigIntegerField,
        db.PositiveSmallIntegerField,
    )
    return {
        db.CharField: "text",
        db.TextField: "text",
        db.DateTimeField: "datetime",
        db.UUIDField: "uuid",
        db.AutoField: "auto",
        db.BigAutoField: "auto",
        db.SmallAutoField: "auto",
        **dict.fromkeys(integers, "integer"),
    }


def _kind(field: Any) -> str | None:
    """The kind of value ``field`` passes on unchanged (see :func:`_plain_kinds`), or ``None``;
    a foreign key's is its target's (its ``get_db_prep_save`` defers to it)."""
    from django.db.models import ForeignKey

    if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
        return None  # stamped by pre_save
    if type(field) is ForeignKey:
        return _kind(field.target_field)
    return _plain_kinds().get(type(field))


def _preparer(field: Any) -> Any:
    """``(instance, conn) -> value`` as ``field.get_db_prep_save(field.pre_save(...))``
    gives it, without the ORM's chain of calls for a plain value: a string of a text
    field, an aware datetime of a date-time field, a UUID of a uuid field and an int of
    an auto field go as they are, an int of an integer field typed as the backend
    types it; any other value (``None`` aside), and every field of another class or
    with ``auto_now``, takes the ORM's way."""

    def orm(instance: Any, conn: Any) -> Any:
        return field.get_db_prep_save(field.pre_save(instance, True), conn)

    kind = _kind(field)
    if kind is None:
        return orm
    attname = field.attname
    if kind == "integer":
        internal = field.get_internal_type()

        def integer(instance: Any, conn: Any) -> Any:
            value = getattr(instance, attname)
            if type(value) is int:
                return conn.ops.adapt_integerfield_value(value, internal)
            return None if value is None else field.get_db_prep_save(value, conn)

        return integer
    plain = {"text": str, "datetime": datetime, "uuid": uuid.UUID, "auto": int}[kind]

    def unchanged(instance: Any, conn: Any) -> Any:
        value = getattr(instance, attname)
        if value is None or (type(value) is plain and (kind != "datetime" or value.tzinfo)):
            return value
        if kind == "text" and isinstance(value, str):
            return value  # a str subclass (a choices enum) is passed on as the ORM does
        return field.get_db_prep_save(value, conn)

    return unchanged


def _saved(instance: Any, conn: Any) -> None:
    """Mark ``instance`` as stored by ``conn``, as the ORM does after its ``INSERT``."""
    instance._state.adding = False
    instance._state.db = conn.alias


def insert_run(run: WorkflowRun, *, skip_repeats: bool) -> None:
    """Store one new run as the ORM's ``bulk_create`` would, by a statement built once
    per process (in ``send``'s transaction, so bound by the server but not prepared,
    see :func:`execute_prepared`); with ``skip_repeats``, one the unique (event,
    workflow) constraint refuses is skipped."""
    if skip_repeats not in _run_insert_sql:
        fields = list(WorkflowRun._meta.concrete_fields)
        columns = _column_list(fields)
        values = ", ".join(["%s"] * len(fields))
        _run_insert_sql[skip_repeats] = (
            f'INSERT INTO "{WorkflowRun._meta.db_table}" ({columns}) VALUES ({values})'
            + (" ON CONFLICT DO NOTHING" if skip_repeats else ""),
            fields,
        )
    sql, fields = _run_insert_sql[skip_repeats]
    conn = connections[DEFAULT_DB_ALIAS]
    execute_prepared(conn, sql, _insert_values(run, fields, conn))
    _saved(run, conn)


def insert_fenced(memo: StepResult, run_id: Any, token: str) -> bool:
    """Insert ``memo`` only while ``token`` holds the running run; whether it did.

    ``FOR SHARE`` locks the run row until the insert commits, so a claim or a cancel
    that comes meanwhile waits for it and a new owner's replay sees the memo.
    """
    global _insert_sql
    if _insert_sql is None:
        fields = _memo_fields()
        casts = ", ".join(f"CAST(%s AS {f.cast_db_type(connection)})" for f in fields)
        columns = _column_list(fields)
        _insert_sql = (
            f'INSERT INTO "{StepResult._meta.db_table}" ({columns}) SELECT {casts} '
            f'FROM "{WorkflowRun._meta.db_table}" '
            f"WHERE id = %s AND lease_owner = %s AND status = '{RunStatus.RUNNING}' "
            "FOR SHARE RETURNING id",
            fields,
        )
    sql, fields = _insert_sql
    conn = connections[DEFAULT_DB_ALIAS]  # one thread-local lookup, not one per field
    params = _insert_values(memo, fields, conn)
    row = execute_prepared(conn, sql, [*params, run_id, token]).fetchone()
    if row is None:
        return False
    memo.pk = row[0]
    _saved(memo, conn)
    return True


#: What the end of a run sets besides its status, output and error, and which run it
#: may end (the one ``token`` holds, still running): shared by both ends of a run.
_ENDED = (
    "finished_at = %(now)s, lease_owner = NULL, lease_expires_at = NULL, due_at = NULL, "
    "wake_at = NULL"
)
_OURS_RUNNING = f"lease_owner = %(token)s AND status = '{RunStatus.RUNNING}'"


def finish(run_id: Any, token: str, status: str, output: Any, error: Any, now: datetime) -> bool:
    """End the run we own as one relaxed statement; whether it was ours to end."""
    field = WorkflowRun._meta.get_field("output")
    conn = _db()
    with conn.cursor() as cursor:
        cursor.execute(
            f'{RELAXED}UPDATE "{WorkflowRun._meta.db_table}" SET status = %(status)s, '
            f"output = %(output)s, error = %(error)s, {_ENDED} "
            f"WHERE id = %(id)s AND {_OURS_RUNNING}",
            {
                "status": status,
                "output": field.get_db_prep_save(output, conn),
                "error": field.get_db_prep_save(error, conn),
                "now": now,
                "id": run_id,
                "token": token,
            },
        )
        next_result(cursor)
        return cursor.rowcount == 1


_finish_with_event_sql: dict[tuple[bool, bool], tuple[str, str, list[Any], list[Any], dict]] = {}


def finish_with_event(
    run_id: Any,
    token: str,
    output: Any,
    now: datetime,
    event: Any,
    lock_key: int,
    memo: StepResult | None = None,
    line: Any = None,
    due: datetime | None = None,
) -> tuple[bool | None, dict[str, Any] | None]:
    """Complete the run we own and store ``event`` (its ``run.finished``), and ``memo``
    (its last step's, held back until now) if given, unless a wait for that event's
    name is recorded in its workspace; with ``line`` (a :class:`workflows.slots.Line`,
    the run's concurrency group), hand its slot to the next run in that line, whose
    ``due_at`` becomes ``due``.

    Outside a transaction: one round trip of two statements, which PostgreSQL runs as
    one transaction; without a memo it commits without waiting for the disk
    (``RELAXED``), with one it waits, as every memo's commit does. The first takes the
    group's lock (with ``line``), then the emitters' shared lock ``lock_key`` (see
    :mod:`workflows.waits`), in the order the ordinary end takes them, so the second,
    whose snapshot comes after them, sees every wait recorded and every run put in
    the line before; a wait recorded after it waits for the commit and then finds the
    event stored. Returns whether it ended and the run handed the slot (or ``None``).
    Ended ``True``: ended, event (and memo) stored, slot handed on; ``False``: not
    ours to end, nothing written; ``None``: a wait exists, nothing was written (end the
    run the ordinary way, which resolves the wait).
    """
    variant = (memo is not None, line is not None)
    if variant not in _finish_with_event_sql:
        _finish_with_event_sql[variant] = _finish_with_event_statement(*variant)
    locks, sql, fields, memo_fields, constants = _finish_with_event_sql[variant]
    conn = _db()
    params = _named(_insert_values(event, fields, conn), "e")
    if memo is not None:
        params.update(_named(_insert_values(memo, memo_fields, conn), "m"))
    if line is not None:
        params.update(constants, **_head_params(line, due), key=line.lock_key)
    params.update(
        lock=lock_key,
        workspace=event.workspace_id,
        name=event.name,
        output=WorkflowRun._meta.get_field("output").get_db_prep_save(output, conn),
        now=now,
        id=run_id,
        token=token,
    )
    waited, stored, memo_id, *head = _after_lock(locks, sql, params)
    if waited:
        return None, None
    if stored:
        _saved(event, conn)
        if memo is not None:
            memo.pk = memo_id
            _saved(memo, conn)
    return bool(stored), _handed_row(tuple(head))


def _finish_with_event_statement(with_memo: bool, handing: bool) -> tuple:
    event_model = WorkflowRun._meta.get_field("event").related_model
    runs = WorkflowRun._meta.db_table
    fields = list(event_model._meta.concrete_fields)
    memo_fields = _memo_fields()
    relaxed = "" if with_memo else _relaxed_cte()
    stored_memo = (
        f""", memo AS (
        INSERT INTO "{StepResult._meta.db_table}" ({_column_list(memo_fields)})
        SELECT {_casts(memo_fields, "m")} FROM ended RETURNING id
    )"""
        if with_memo
        else ""
    )
    constants: dict[str, Any] = {}
    handed = ""
    if handing:
        head, constants = _head()
        handed = f", {head}, handed AS ({_handed(also=', ended')})"
    locks = "pg_advisory_xact_lock(%(key)s), " if handing else ""
    columns = [WorkflowRun._meta.get_field(f).column for f in _HANDED_FIELDS]
    handed_fields = ", ".join(f'handed."{column}"' if handing else "NULL" for column in columns)
    locks = f"SELECT {locks}pg_advisory_xact_lock_shared(%(lock)s)"
    sql = f"""WITH {relaxed}waited AS (
        SELECT {_waited()} AS found
    ), ended AS (
        UPDATE "{runs}" SET status = '{RunStatus.COMPLETED}', output = %(output)s,
            error = NULL, {_ENDED}
        FROM {"waited" if with_memo else "relaxed, waited"}
        WHERE id = %(id)s AND {_OURS_RUNNING} AND NOT waited.found
        RETURNING "{runs}".id
    ), stored AS (
        INSERT INTO "{event_model._meta.db_table}" ({_column_list(fields)})
        SELECT {_casts(fields, "e")} FROM ended RETURNING 1
    ){stored_memo}{handed}
    SELECT waited.found, (SELECT count(*) FROM stored),
        {"(SELECT id FROM memo)" if with_memo else "NULL"}, {handed_fields}
    FROM waited{" LEFT JOIN handed ON true" if handing else ""}"""
    return locks, _compact(sql), fields, memo_fields, constants


_store_with_runs_sql: dict[int, tuple[str, list[Any], list[Any]]] = {}


def store_with_runs(event: Any, runs: list[WorkflowRun], lock_key: int) -> bool:
    """Store the emitted ``event`` and the new queued ``runs`` it starts, unless a wait
    for the event's name is recorded in its workspace or the workflow of one of the
    runs is paused there.

    Outside a transaction: one round trip of two statements, which PostgreSQL runs as
    one transaction (its commit waits for the disk, as a ``send`` must). The first takes
    the emitters' shared lock ``lock_key`` (see :mod:`workflows.waits`), so the second,
    whose snapshot comes after it, sees every wait recorded before; a wait recorded
    after it waits for the commit and then finds the event stored. ``True``: stored;
    ``False``: nothing was written (store the event the ordinary way, which resolves
    the wait or records the skip of the paused workflow).
    """
    if len(runs) not in _store_with_runs_sql:
        event_model = WorkflowRun._meta.get_field("event").related_model
        event_fields = list(event_model._meta.concrete_fields)
        run_fields = list(WorkflowRun._meta.concrete_fields)
        sql = f"""WITH held AS (
            SELECT {_waited()} OR EXISTS (
                SELECT 1 FROM "{models.PausedWorkflow._meta.db_table}"
                WHERE workflow_id = ANY(CAST(%(workflows)s AS text[]))
                    AND (workspace_id IS NULL OR workspace_id = %(workspace)s)
            ) AS found
        ), stored AS (
            INSERT INTO "{event_model._meta.db_table}" ({_column_list(event_fields)})
            SELECT {_casts(event_fields, "e")} FROM held WHERE NOT held.found RETURNING 1
        )"""
        if runs:
            rows = " UNION ALL ".join(
                f"SELECT {_casts(run_fields, f'r{k}_')} FROM stored" for k in range(len(runs))
            )
            sql += f""", started AS (
            INSERT INTO "{WorkflowRun._meta.db_table}" ({_column_list(run_fields)}) {rows}
            RETURNING 1
        )"""
        sql += "\n        SELECT count(*) FROM stored"
        _store_with_runs_sql[len(runs)] = (_compact(sql), event_fields, run_fields)
    sql, event_fields, run_fields = _store_with_runs_sql[len(runs)]
    conn = _db()
    params = _named(_insert_values(event, event_fields, conn), "e")
    for k, run in enumerate(runs):
        params.update(_named(_insert_values(run, run_fields, conn), f"r{k}_"))
    params.update(
        lock=lock_key,
        workspace=event.workspace_id,
        name=event.name,
        workflows=[run.workflow_id for run in runs],
    )
    (stored,) = _after_lock("SELECT pg_advisory_xact_lock_shared(%(lock)s)", sql, params)
    if not stored:
        return False
    for row in (event, *runs):
        _saved(row, conn)
    return True


def _waited() -> str:
    """Whether a wait for the event ``%(name)s`` is recorded in ``%(workspace)s``: the
    emitters' question, asked after their shared lock (:func:`waited_for`,
    :func:`finish_with_event`, :func:`store_with_runs`)."""
    table = models.Wait._meta.db_table
    return (
        f'EXISTS (SELECT 1 FROM "{table}" '
        "WHERE workspace_id = %(workspace)s AND event_name = %(name)s)"
    )


def waited_for(lock_key: int, workspace_id: Any, name: str) -> bool:
    """Take the shared advisory lock ``lock_key`` (an emitter's, see
    :mod:`workflows.waits`), then: is any wait for event ``name`` in the workspace
    recorded? One round trip of two statements: the second takes its snapshot after the
    lock is granted, so it sees every wait recorded under the exclusive lock before."""
    return _after_lock(
        "SELECT pg_advisory_xact_lock_shared(%(lock)s)",
        f"SELECT {_waited()}",
        {"lock": lock_key, "workspace": workspace_id, "name": name},
    )[0]


def pauses_of(workflow_ids: list[str]) -> list[tuple[str, Any]]:
    """The (workflow id, workspace id or ``None``) of the pauses of ``workflow_ids``
    (see :meth:`workflows.models.PausedQuerySet.among`), by one statement built once
    (inside ``send``'s transaction: not prepared, see :func:`execute_prepared`)."""
    table = models.PausedWorkflow._meta.db_table
    sql = f'SELECT workflow_id, workspace_id FROM "{table}" WHERE workflow_id = ANY(%s)'
    return execute_prepared(_db(), sql, [workflow_ids]).fetchall()
