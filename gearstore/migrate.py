"""Schema migrations for the SQL stores, run through alembic configured in code.

The migration scripts live in the top-level ``migrations/`` folder of the source tree
and ship in the wheel as ``gearstore/_migrations``. No ``alembic.ini`` is needed: the
script location, the connection and the queue table's name are handed to alembic here.
Each queue table has its own alembic version table (``<table>_alembic_version``), so
several queues, and other applications, can share one database.

The CLI's ``gearstore db upgrade`` and ``gearstore db current`` call :func:`db_upgrade`
and :func:`db_current`; stores call :func:`upgrade` or :func:`check_at_head` in open().
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

import gearstore
from gearstore.stores import canonical_kind, create_store
from gearstore.stores.base import SchemaTooNew, StoreConfig, StoreError
from gearstore.stores.sql import SqlStore, make_table


def script_location() -> Path:
    """The folder holding ``env.py`` and ``versions/``: packaged copy first, then source."""
    package_dir = Path(gearstore.__file__).resolve().parent
    packaged = package_dir / "_migrations"
    if (packaged / "env.py").is_file():
        return packaged
    return package_dir.parent / "migrations"


def version_table(table: str) -> str:
    """The alembic version table that belongs to queue table ``table``."""
    return f"{table}_alembic_version"


def alembic_config(connection: Connection | None = None, table: str | None = None) -> Config:
    """An alembic Config pointing at our scripts, carrying the connection and table."""
    cfg = Config()
    # ConfigParser interpolates '%', which may occur in an install path.
    cfg.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    if table is not None:
        cfg.attributes["table"] = table
        cfg.attributes["version_table"] = version_table(table)
    return cfg


@functools.lru_cache(maxsize=4)
def _scripts(location: Path) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def _script_directory() -> ScriptDirectory:
    return _scripts(script_location())


def head_revision() -> str:
    """The newest revision this gearstore knows."""
    head = _script_directory().get_current_head()
    if head is None:  # pragma: no cover - the package always ships its scripts
        raise StoreError(f"no migration scripts found in {script_location()}")
    return head


def known_revisions() -> frozenset[str]:
    """Every revision id this gearstore ships."""
    return frozenset(script.revision for script in _script_directory().walk_revisions())


def current_revision(bind: Connection | Engine, table: str) -> str | None:
    """The revision the database's schema for ``table`` is at, or None if never created."""
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return current_revision(conn, table)
    context = MigrationContext.configure(bind, opts={"version_table": version_table(table)})
    return context.get_current_revision()


def check_known(bind: Connection | Engine, table: str, where: str = "the database") -> str | None:
    """Return the current revision; raise SchemaTooNew if this gearstore does not know it."""
    current = current_revision(bind, table)
    if current is not None and current not in known_revisions():
        raise SchemaTooNew(
            f"the schema in {where} is at revision {current}, newer than this gearstore "
            f"(head {head_revision()}); upgrade gearstore or use a matching version"
        )
    return current


def check_at_head(bind: Connection | Engine, table: str, where: str = "the database") -> None:
    """Refuse to run on a schema that is missing, older or newer than this gearstore's."""
    current = check_known(bind, table, where)
    head = head_revision()
    if current != head:
        found = "no gearstore schema" if current is None else f"schema revision {current}"
        raise StoreError(
            f"{where} has {found} but this gearstore needs revision {head}, and automatic "
            "migration is off; run `gearstore db upgrade` first"
        )


@contextlib.contextmanager
def _one_migrator(conn: Connection, table: str) -> Iterator[None]:
    """Serialise migrations of one table between servers starting at the same time."""
    name = f"gearstore_migrate_{table}"
    if conn.dialect.name == "postgresql":
        # released by the enclosing transaction's commit or rollback
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})
        yield
    elif conn.dialect.name in ("mysql", "mariadb"):
        # MySQL DDL commits on its own, so this is a session lock released explicitly
        conn.execute(sa.text("SELECT GET_LOCK(:name, 60)"), {"name": name})
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name})
    else:  # SQLite: the store's file lock already keeps other servers out
        yield


def upgrade(bind: Connection | Engine, table: str, *, where: str = "the database") -> str:
    """Create or upgrade ``table``'s schema to head; return the revision now current.

    With a Connection the caller owns the transaction; with an Engine one is begun here.
    Raises SchemaTooNew instead of touching a schema newer than this gearstore.
    """
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            return upgrade(conn, table, where=where)
    with _one_migrator(bind, table):
        current = check_known(bind, table, where)
        head = head_revision()
        if current is None and sa.inspect(bind).has_table(table):
            raise StoreError(
                f"{where} already has a table {table} that gearstore did not create (gearmand's "
                "queue table?); choose another --table, and bring gearmand's jobs over with "
                "`gearstore db import-gearmand`"
            )
        if current != head:
            command.upgrade(alembic_config(bind, table), "head")
    return head


def compare_schema(bind: Connection, table: str) -> list[Any]:
    """alembic autogenerate's differences between ``table`` in the database and the model
    in :func:`gearstore.stores.sql.make_table` (an empty list when they match).

    Only ``table`` is compared, so other tables in a shared database do not count.
    """

    def only_ours(name: str | None, type_: str, parent: Any) -> bool:
        return type_ != "table" or name == table

    context = MigrationContext.configure(
        bind,
        opts={
            "compare_type": True,
            "include_name": only_ours,
            "version_table": version_table(table),
        },
    )
    metadata = sa.MetaData()
    make_table(metadata, table)
    return list(compare_metadata(context, metadata))


def _sql_store(config: StoreConfig) -> SqlStore:
    """Build the SQL adapter for ``config``, refusing non-SQL queue types."""
    try:
        kind = canonical_kind(config.kind)
    except ValueError as exc:
        raise StoreError(str(exc)) from exc
    store = create_store(config) if kind in ("sqlite", "postgres", "mysql") else None
    if not isinstance(store, SqlStore):
        raise StoreError(
            f"`gearstore db` manages SQL schemas only; queue type {config.kind!r} has none "
            "(use sqlite, postgres or mysql)"
        )
    return store


def db_upgrade(config: StoreConfig) -> str:
    """``gearstore db upgrade``: bring the configured store's schema to head.

    Returns the revision now current. Takes the same locks as a starting server.
    """
    store = _sql_store(dataclasses.replace(config, migrate=True))
    store.open()
    try:
        return store.schema_revision() or head_revision()
    finally:
        store.close()


def db_current(config: StoreConfig) -> str | None:
    """``gearstore db current``: the configured store's schema revision (None: no schema).

    Only reads; it neither migrates nor takes the store's lock, so it works while a
    server is running.
    """
    return _sql_store(config).schema_revision()
