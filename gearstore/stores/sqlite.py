"""SQLite queue store: ``gearstore -q sqlite --db PATH``.

Data layout: the shared table of :mod:`gearstore.stores.sql` (one row per job, keyed
by job id) in one SQLite file, in WAL mode with ``synchronous=FULL`` unless configured
otherwise. Replay reads the rows in id order, a page at a time.

Only one gearstore process may use a file at once: open() takes an exclusive
``flock`` on ``PATH-lock`` (a separate file because SQLite's own POSIX locks on the
database are dropped whenever any descriptor of that file is closed in the process).
The lock file holds the owner's pid and is left in place after close.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from gearstore.stores.base import StoreConfig, StoreCorrupt, StoreError
from gearstore.stores.pidlock import lock_exclusively
from gearstore.stores.sql import SqlStore

#: accepted values of StoreConfig.sqlite_synchronous (docs/stores-sql.md says what each risks)
SYNCHRONOUS_MODES = ("EXTRA", "FULL", "NORMAL", "OFF")

# sqlite3 error texts that mean the file itself is bad, not that it is busy or unreachable
_CORRUPT_SIGNS = ("file is not a database", "malformed", "file is encrypted")


class SqliteStore(SqlStore):
    """The queue in one SQLite file, guarded by an exclusive lock file."""

    backend = "SQLite"
    driver_errors: ClassVar[tuple[type[Exception], ...]] = (sqlite3.Error,)
    #: how long a write waits for a reader outside gearstore (an operator's sqlite3
    #: shell, a backup) before giving up with StoreUnavailable
    busy_timeout_ms: int = 5000

    def __init__(self, config: StoreConfig) -> None:
        if not config.db:
            raise StoreError("the sqlite store needs a database file: pass --db PATH")
        if config.db == ":memory:" or config.db.startswith("file:"):
            raise StoreError(
                f"--db {config.db!r} is not a file path; give a file name "
                "(for a queue that keeps nothing, use -q builtin)"
            )
        self.path = os.path.abspath(config.db)
        self.lock_path = self.path + "-lock"
        self.synchronous = config.sqlite_synchronous.upper()
        if self.synchronous not in SYNCHRONOUS_MODES:
            raise StoreError(
                f"invalid SQLite synchronous mode {config.sqlite_synchronous!r}; "
                f"choose one of {', '.join(SYNCHRONOUS_MODES)}"
            )
        self._lock_fd: int | None = None
        super().__init__(config)

    def _target(self) -> str:
        return self.path

    def _unavailable_hint(self) -> str:
        return (
            "check free disk space, permissions, and that no other program holds a write "
            "transaction on the file"
        )

    def _lock(self) -> None:
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise StoreError(
                f"cannot open {self.path}: directory {directory} does not exist; create it "
                "or choose another --db path"
            )
        self._lock_fd = lock_exclusively(
            self.lock_path,
            lambda reason: (
                f"cannot create lock file {self.lock_path}: {reason}; the directory "
                "must be writable by gearstore"
            ),
            lambda pid: (
                f"{self.path} is already in use by another gearstore process "
                f"(pid {pid}?); stop that server or give this one its own --db file"
            ),
        )

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            # closing the descriptor drops the flock; the file stays (unlinking it could
            # race with a process that has just opened it)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def _create_engine(self) -> Engine:
        engine = sa.create_engine(
            sa.URL.create("sqlite+pysqlite", database=self.path),
            pool_pre_ping=True,
            pool_size=2,
            max_overflow=2,
        )
        synchronous = self.synchronous
        busy_ms = int(self.busy_timeout_ms)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control from the sqlite3 module (its legacy mode does not
            # BEGIN before DDL or SELECT) and let SQLAlchemy's begin hook below do it.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute(f"PRAGMA synchronous = {synchronous}")
            finally:
                cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            # IMMEDIATE takes the write lock up front, so a batch never fails half-way
            # with SQLITE_BUSY when it upgrades from reading to writing.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def _translate(self, exc: Exception, action: str) -> StoreError:
        orig = getattr(exc, "orig", None) or exc
        text = str(orig)
        if isinstance(orig, sqlite3.DatabaseError) and any(s in text for s in _CORRUPT_SIGNS):
            return StoreCorrupt(
                f"could not {action}: {self.path} is not a SQLite database or is damaged "
                f"({text}); restore it from a backup or move it aside to start empty"
            )
        return super()._translate(exc, action)
