"""The store's hot statements, run on the database driver's own connection.

Every statement of the store is built with SQLAlchemy Core. The few that run for every
job — the API's insert, a runner's claim, start, lease renewal and end, a read by id —
cost more in SQLAlchemy's execution layer than in the database: a claim on SQLite took
240 µs through ``Connection.execute`` and 47 µs as the same SQL on the ``sqlite3``
connection (median of 2,000, one process). A :class:`Driver` runs such a statement
compiled once by SQLAlchemy for the engine's dialect — the same SQL text, its parameters
converted by the same bind processors, its rows read back by the same result
processors — on a connection checked out of the engine's own pool (with the pool's
checkout checks), with the driver's cursor. Errors are raised as SQLAlchemy raises them
(``orchestrator.store.STORE_DOWN`` still catches a store that is down), and a lost
connection is invalidated, not put back.

A transaction (:meth:`Driver.write`) is SQLite's: ``BEGIN IMMEDIATE`` with the store's
fine wait for the write lock (:func:`orchestrator.schema.begin_immediate`), then COMMIT.
On PostgreSQL the store sends only statements that are a whole transaction on their own
here (one data-modifying CTE writes the job and its attempt's row), so each runs in
autocommit: one round trip, no BEGIN or COMMIT.

Only statements whose every parameter is named (``bindparam("p_id")``) or a constant of
the statement, and whose defaults are plain values, compile here: anything else (an
expanding ``IN``, a default computed in Python) is refused when first compiled, so a
test that runs the statement catches it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orchestrator.schema import begin_immediate

Row = dict[str, Any]


class _Compiled:
    """One statement compiled for one dialect: its SQL, how its parameters are laid out
    and converted, and (from its first rows) how its columns are read."""

    __slots__ = ("sql", "names", "fixed", "binds", "positional", "keys", "types", "readers")

    def __init__(self, stmt: Any, dialect: Any, column_keys: Sequence[str] | None) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=column_keys)
        self.sql = str(compiled)
        self.positional = bool(compiled.positional)
        # The statement's own values (its constants, plain defaults), converted once; the
        # caller's: (name in the SQL, key in the caller's parameters, converter).
        self.fixed: dict[str, Any] = {}
        self.binds: list[tuple[str, str, Any]] = []
        defaults = {c.key: c for c in (*compiled.insert_prefetch, *compiled.update_prefetch)}
        for bind, name in compiled.bind_names.items():
            if bind.expanding:
                raise TypeError(f"driver statements take no expanding IN: {name}")
            proc = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if bind.required:
                self.binds.append((name, bind.key, proc))
                continue
            column = defaults.get(bind.key)
            if column is not None:
                default = column.default if column.default is not None else column.onupdate
                if default is None or not default.is_scalar:
                    raise TypeError(f"driver statements take only plain defaults: {bind.key}")
                value = default.arg
            else:
                value = bind.effective_value
            self.fixed[name] = proc(value) if proc is not None else value
        self.names: list[str] = list(compiled.positiontup or ()) if self.positional else []
        columns = list(getattr(stmt, "exported_columns", ()) or ())
        self.keys = [c.key for c in columns]
        self.types = [c.type for c in columns]
        self.readers: list[Any] | None = None

    def args(self, params: Mapping[str, Any]) -> Any:
        values = dict(self.fixed)
        for name, key, proc in self.binds:
            value = params[key]  # (None too goes through: JSON's None is stored 'null')
            values[name] = proc(value) if proc is not None else value
        if self.positional:
            return tuple(values[n] for n in self.names)
        return values

    def row(self, raw: Sequence[Any], cursor: Any, dialect: Any) -> Row:
        readers = self.readers
        if readers is None:  # (SQLAlchemy's result processors, for the types the driver sent)
            readers = self.readers = [
                t.dialect_impl(dialect).result_processor(dialect, d[1])
                for t, d in zip(self.types, cursor.description, strict=True)
            ]
        return {
            k: (r(v) if r is not None and v is not None else v)
            for k, r, v in zip(self.keys, readers, raw, strict=True)
        }


class Transaction:
    """Statements on one checked-out driver connection (see :meth:`Driver.write`)."""

    __slots__ = ("_driver", "_cursor")

    def __init__(self, driver: Driver, cursor: Any) -> None:
        self._driver = driver
        self._cursor = cursor

    def first(self, stmt: Any, params: Mapping[str, Any]) -> Row | None:
        """Run ``stmt``; its first row (a dict by column key), or ``None``."""
        compiled = self._driver.compiled(stmt, None)
        cur = self._cursor
        self._execute(compiled.sql, compiled.args(params))
        raw = cur.fetchone()
        if raw is None:
            return None
        row = compiled.row(raw, cur, self._driver.dialect)
        cur.fetchall()  # (RETURNING on SQLite: the statement completes when read out)
        return row

    def run(self, stmt: Any, params: Mapping[str, Any]) -> int:
        """Run ``stmt`` (an INSERT's columns are ``params``'s keys); its row count."""
        compiled = self._driver.compiled(stmt, params)
        self._execute(compiled.sql, compiled.args(params))
        return int(self._cursor.rowcount)

    def run_many(self, stmt: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run ``stmt`` once per row of parameters (all with the same keys)."""
        if not rows:
            return
        compiled = self._driver.compiled(stmt, rows[0])
        self._execute(compiled.sql, [compiled.args(p) for p in rows], many=True)

    def _execute(self, sql: str, args: Any, *, many: bool = False) -> None:
        watched = self._driver.watched
        if watched:
            watched(None, self._cursor, sql, args, None, many)
        (self._cursor.executemany if many else self._cursor.execute)(sql, args)


class Driver:
    """Runs compiled hot statements on ``engine``'s pooled driver connections.

    ``autocommit`` (PostgreSQL): every statement commits on its own. Else (SQLite) a
    :meth:`write` is one transaction, begun ``IMMEDIATE``."""

    def __init__(self, engine: Engine, *, autocommit: bool) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self.autocommit = autocommit
        # id(stmt) → (stmt, compiled); holding the statement keeps its id unique.
        self._compiled: dict[tuple[int, tuple[str, ...] | None], tuple[Any, _Compiled]] = {}
        self._dbapi_error: Any = engine.dialect.loaded_dbapi.Error

    @property
    def watched(self) -> Any:
        """The engine's ``before_cursor_execute`` listeners, which see these statements
        too (with no Connection or context): SQLite's write lock, tests that count
        writes. (Looked up each time: a first listener replaces the empty collection.)"""
        return self.engine.dispatch.before_cursor_execute

    def compiled(self, stmt: Any, params: Mapping[str, Any] | None) -> _Compiled:
        keys = tuple(params) if params is not None and isinstance(stmt, sa.Insert) else None
        key = (id(stmt), keys)
        hit = self._compiled.get(key)
        if hit is None:
            hit = self._compiled[key] = (stmt, _Compiled(stmt, self.dialect, keys))
        return hit[1]

    @contextlib.contextmanager
    def write(self) -> Iterator[Transaction]:
        """One write transaction (on PostgreSQL: statements in autocommit)."""
        with self._checkout(write=True) as tx:
            yield tx

    @contextlib.contextmanager
    def read(self) -> Iterator[Transaction]:
        """Reads, each seeing the last commit (no transaction held open)."""
        with self._checkout(write=False) as tx:
            yield tx

    @contextlib.contextmanager
    def rehearsal(self) -> Iterator[Transaction]:
        """One transaction, rolled back at the end (on PostgreSQL too): statements run in
        it are compiled and their rows' readers made, and nothing changes."""
        with self._checkout(write=True, keep=False) as tx:
            yield tx

    @contextlib.contextmanager
    def _checkout(self, *, write: bool, keep: bool = True) -> Iterator[Transaction]:
        try:
            fairy = self.engine.raw_connection()
        except self._dbapi_error as exc:  # (the pool's connect: SQLAlchemy wraps it)
            raise self._wrapped(exc, invalidated=False) from exc
        conn: Any = fairy.driver_connection
        cursor = None
        invalidated = autocommit = False
        try:
            try:
                autocommit = self.autocommit and keep
                if autocommit:
                    conn.autocommit = True
                elif write and not self.autocommit:
                    # SQLite. (A rehearsal on PostgreSQL: psycopg begins the transaction.)
                    begin_immediate(conn)
                cursor = conn.cursor()
                yield Transaction(self, cursor)
                if not keep:
                    conn.rollback()
                elif write and not autocommit:
                    conn.commit()
            except self._dbapi_error as exc:
                invalidated = self.dialect.is_disconnect(exc, conn, cursor)
                if invalidated:
                    fairy.invalidate(exc)
                else:
                    conn.rollback()
                raise self._wrapped(exc, invalidated=invalidated) from exc
            except BaseException:
                conn.rollback()
                raise
        finally:
            if not invalidated:
                if cursor is not None:
                    cursor.close()
                if autocommit:
                    conn.autocommit = False
            fairy.close()

    def _wrapped(self, exc: Exception, *, invalidated: bool) -> BaseException:
        return sa.exc.DBAPIError.instance(
            None,
            None,
            exc,
            self._dbapi_error,
            connection_invalidated=invalidated,
            dialect=self.dialect,
        )
