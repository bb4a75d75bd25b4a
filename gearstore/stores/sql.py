"""The SQL stores' shared table and adapter base (SQLite, PostgreSQL, MySQL/MariaDB).

Data layout: one row per stored background job in one table (default
``gearstore_queue``), keyed by the server-assigned job ``id`` and nothing else.
gearmand keys its rows by (unique, function) and so silently replaces background jobs
that share an empty unique key, and its MySQL store rejects a reused unique; keying by
id makes every submitted job its own row, whatever its strings are. Every string column
is binary (BLOB/BYTEA), so names and keys are stored byte for byte.

Replay: rows are read in id order by keyset pagination (``WHERE id > last ORDER BY id
LIMIT n``), each page streamed from the server a few rows at a time, so neither a
million rows nor one long-lived transaction are ever held at once.

The dialect modules (:mod:`.sqlite`, :mod:`.postgres`, :mod:`.mysql`) only say how to
build the engine, lock, and explain their driver's errors; everything else is here.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Connection, Engine

from gearstore.stores.base import (
    Priority,
    QueueStore,
    StoreConfig,
    StoreCorrupt,
    StoredJob,
    StoreError,
    StoreUnavailable,
)

DEFAULT_TABLE = "gearstore_queue"

#: Longest accepted table name: PostgreSQL truncates identifiers at 63 bytes and MySQL
#: refuses more than 64, and the alembic version table appends "_alembic_version_pkc".
MAX_TABLE_NAME = 40

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

#: the table's columns in INSERT order
_COLUMNS = ("id", "function_name", "unique_key", "priority", "when_epoch", "data", "reducer")

_PRIORITIES = {int(p): p for p in Priority}


def valid_table_name(name: str | None) -> str:
    """Return ``name`` (or the default) if it is a safe, portable SQL identifier.

    Names are restricted to ``[A-Za-z_][A-Za-z0-9_]*`` so they need no quoting rules of
    their own on any of the three databases and cannot smuggle SQL into DDL.
    """
    table = DEFAULT_TABLE if name is None else name
    if not _TABLE_NAME.match(table) or len(table) > MAX_TABLE_NAME:
        raise StoreError(
            f"invalid table name {table!r}: use letters, digits and '_' only, starting with a "
            f"letter or '_', at most {MAX_TABLE_NAME} characters"
        )
    return table


def _binary() -> sa.types.TypeEngine[bytes]:
    """Short binary strings (function names, unique keys, reducers): BLOB holds 64 KiB
    on MySQL, more than any Gearman name, and needs no length of its own."""
    return (
        sa.LargeBinary()
        .with_variant(postgresql.BYTEA(), "postgresql")
        .with_variant(mysql.BLOB(), "mysql", "mariadb")
    )


def _big_binary() -> sa.types.TypeEngine[bytes]:
    """Job payloads: MySQL's plain BLOB stops at 64 KiB, LONGBLOB at 4 GiB."""
    return (
        sa.LargeBinary()
        .with_variant(postgresql.BYTEA(), "postgresql")
        .with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
    )


def make_table(metadata: sa.MetaData, name: str = DEFAULT_TABLE) -> sa.Table:
    """Build the queue table definition named ``name`` in ``metadata``.

    This is the model the migrations in ``migrations/versions`` must reproduce exactly
    (a test compares the two with alembic's ``compare_metadata``).
    """
    return sa.Table(
        name,
        metadata,
        # INTEGER on SQLite makes the column an alias of the rowid (one b-tree, not two);
        # SQLite's INTEGER is 64-bit anyway.
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("function_name", _binary(), nullable=False),
        sa.Column("unique_key", _binary(), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("when_epoch", sa.BigInteger(), nullable=True),
        sa.Column("data", _big_binary(), nullable=False),
        sa.Column("reducer", _binary(), nullable=True),
        mysql_engine="InnoDB",
    )


def _first_line(exc: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's SQL dump and background link."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


class SqlStore(QueueStore):
    """Shared implementation of open/replay/apply/close over SQLAlchemy Core.

    Subclasses set :attr:`backend` and :attr:`driver_errors`, build the engine in
    :meth:`_create_engine`, and may override the hooks (``_lock``, ``_unlock``,
    ``_after_open``, ``_check_batch``, ``_translate``).
    """

    #: name used in messages: "SQLite", "PostgreSQL", "MySQL"
    backend: ClassVar[str] = "SQL"
    #: the DBAPI driver's base exception classes, raised outside SQLAlchemy's wrapping
    driver_errors: ClassVar[tuple[type[Exception], ...]] = ()
    #: rows per keyset page in replay, and rows fetched from the server at a time
    replay_page_size: int = 1000
    replay_fetch_size: int = 64
    #: ids per ``DELETE ... WHERE id IN (...)``; SQLite allows 32766 bound parameters
    delete_chunk_size: int = 500

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.table_name = valid_table_name(config.table)
        self.table = make_table(sa.MetaData(), self.table_name)
        self._engine: Engine | None = None
        self._insert_sql: tuple[str, bool] | None = None
        # what apply/replay/open turn into StoreErrors: SQLAlchemy's wrappers, plus the
        # driver's own exceptions for the few paths (connect hooks) that bypass them
        self._caught: tuple[type[Exception], ...] = (sa_exc.SQLAlchemyError, *self.driver_errors)
        self.description = f"{self.backend} {self._target()} table {self.table_name}"

    # ---- hooks for the dialect modules ---------------------------------------------

    @abc.abstractmethod
    def _target(self) -> str:
        """Where the data lives, for messages (a path or a URL without password)."""

    @abc.abstractmethod
    def _create_engine(self) -> Engine:
        """Build the engine; called by :meth:`open` after :meth:`_lock`."""

    def _lock(self) -> None:
        """Keep other gearstore processes off this store (SQLite only)."""

    def _unlock(self) -> None:
        """Release what :meth:`_lock` took."""

    def _after_open(self, conn: Connection) -> None:
        """Read server settings once the schema is in place."""

    def _check_batch(self, add: Sequence[StoredJob]) -> None:
        """Refuse, before sending anything, a batch the server is known to reject."""

    def _unavailable_hint(self) -> str:
        """What an operator should do when the backend cannot be reached."""
        return f"check that the {self.backend} server is running and reachable"

    def _translate(self, exc: Exception, action: str) -> StoreError:
        """Turn a driver or SQLAlchemy error into the StoreError an operator should see.

        Connection-level failures become StoreUnavailable (the store writer retries
        them); everything else is a StoreError carrying the driver's message.
        """
        if isinstance(exc, StoreError):
            return exc
        detail = _first_line(exc)
        if isinstance(
            exc,
            sa_exc.OperationalError
            | sa_exc.InterfaceError
            | sa_exc.DisconnectionError
            | sa_exc.TimeoutError,
        ) or getattr(exc, "connection_invalidated", False):
            return StoreUnavailable(
                f"could not {action}: {self.description} is unavailable ({detail}); "
                f"{self._unavailable_hint()}"
            )
        return StoreError(f"could not {action} in {self.description}: {detail}")

    # ---- QueueStore ----------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The open engine (tests use it to look at the database directly)."""
        if self._engine is None:
            raise StoreError(f"{self.description} is not open; call open() first")
        return self._engine

    def open(self) -> None:
        """Connect, then create/upgrade the schema (or only check it if migrate=False)."""
        from gearstore import migrate  # migrate imports this module

        if self._engine is not None:
            return
        self._lock()
        engine: Engine | None = None
        try:
            engine = self._create_engine()
            with engine.begin() as conn:
                if self.config.migrate:
                    migrate.upgrade(conn, self.table_name, where=self.description)
                else:
                    migrate.check_at_head(conn, self.table_name, where=self.description)
                self._after_open(conn)
        except BaseException as exc:
            if engine is not None:
                engine.dispose()
            self._unlock()
            if isinstance(exc, self._caught):
                raise self._translate(exc, "open the store") from exc
            raise
        self._engine = engine

    def replay(self) -> Iterator[StoredJob]:
        """Yield every stored job in id order, one keyset page at a time."""
        engine = self.engine
        t = self.table
        columns = (
            t.c.id,
            t.c.function_name,
            t.c.unique_key,
            t.c.priority,
            t.c.when_epoch,
            t.c.data,
            t.c.reducer,
        )
        last: int | None = None
        while True:
            query = sa.select(*columns).order_by(t.c.id).limit(self.replay_page_size)
            if last is not None:
                query = query.where(t.c.id > last)
            count = 0
            try:
                with engine.connect() as conn:
                    result = conn.execution_options(yield_per=self.replay_fetch_size).execute(query)
                    for row in result:
                        job = self._job_from_row(row)
                        last = job.id
                        count += 1
                        yield job
            except self._caught as exc:
                raise self._translate(exc, "read the stored jobs") from exc
            if count < self.replay_page_size:
                return

    def apply(self, add: Sequence[StoredJob], remove: Sequence[int]) -> None:
        """Insert ``add`` and delete ``remove`` in one transaction (adds first)."""
        if not add and not remove:
            return
        engine = self.engine
        self._check_batch(add)
        t = self.table
        step = self.delete_chunk_size
        try:
            with engine.begin() as conn:
                if add:
                    # Straight to the driver's executemany: SQLAlchemy's per-value bind
                    # processing would cost more than SQLite's whole insert (the values
                    # are already bytes, ints and None that every driver takes as is).
                    sql, positional = self._insert_statement(engine)
                    rows = [
                        (
                            job.id,
                            job.function,
                            job.unique,
                            int(job.priority),
                            job.when,
                            job.data,
                            job.reducer,
                        )
                        for job in add
                    ]
                    if positional:
                        conn.exec_driver_sql(sql, rows)
                    else:
                        conn.exec_driver_sql(
                            sql, [dict(zip(_COLUMNS, r, strict=True)) for r in rows]
                        )
                for start in range(0, len(remove), step):
                    chunk = list(remove[start : start + step])
                    conn.execute(t.delete().where(t.c.id.in_(chunk)))
        except self._caught as exc:
            raise self._translate(
                exc, f"write a batch ({len(add)} new jobs, {len(remove)} removals)"
            ) from exc

    def _insert_statement(self, engine: Engine) -> tuple[str, bool]:
        """The INSERT in the driver's own parameter style, and whether it is positional."""
        if self._insert_sql is None:
            compiled = self.table.insert().compile(
                dialect=engine.dialect, column_keys=list(_COLUMNS)
            )
            if compiled.positional and list(compiled.positiontup or ()) != list(_COLUMNS):
                raise StoreError(f"unexpected INSERT parameter order: {compiled.positiontup}")
            self._insert_sql = (compiled.string, compiled.positional)
        return self._insert_sql

    def close(self) -> None:
        """Dispose of the connection pool and release the lock; idempotent."""
        engine, self._engine = self._engine, None
        try:
            if engine is not None:
                engine.dispose()
        finally:
            self._unlock()

    def schema_revision(self) -> str | None:
        """The schema revision stored in the database (None: no schema yet).

        Works on an unopened store too (for ``gearstore db current``): it then connects
        without locking or migrating anything.
        """
        from gearstore import migrate

        engine = self._engine or self._create_engine()
        try:
            with engine.connect() as conn:
                return migrate.current_revision(conn, self.table_name)
        except self._caught as exc:
            raise self._translate(exc, "read the schema revision") from exc
        finally:
            if engine is not self._engine:
                engine.dispose()

    # ---- helpers -------------------------------------------------------------------

    def _job_from_row(self, row: Sequence[Any]) -> StoredJob:
        """Rebuild a StoredJob with exact types, or report the row as corrupt."""
        job_id, function, unique, raw_priority, when, data, reducer = row
        priority = _PRIORITIES.get(raw_priority)
        if priority is None:
            raise StoreCorrupt(
                f"job {job_id} in {self.description} has priority {raw_priority!r}, which "
                "is not 0 (high), 1 (normal) or 2 (low); fix or delete that row"
            )
        # bytes() of a bytes object is the object itself; drivers that hand back
        # memoryview or bytearray get converted
        return StoredJob(
            int(job_id),
            bytes(function),
            bytes(unique),
            priority,
            None if when is None else int(when),
            bytes(data),
            None if reducer is None else bytes(reducer),
        )
