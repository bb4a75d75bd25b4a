"""PostgreSQL queue store (psycopg 3): ``gearstore -q postgres --db URL``.

Data layout: the shared table of :mod:`gearstore.stores.sql` (one row per job, keyed
by job id; strings and data in BYTEA) in the database named by the URL. Replay reads
the rows in id order, a keyset page at a time through a server-side cursor, and
restores each job's own priority and epoch time (gearmand's libpq store brings every
job back as HIGH and runs epoch jobs at once).

``--db`` accepts ``postgresql://…``, ``postgres://…`` or a libpq conninfo string such as
``"host=/var/run/postgresql dbname=gearman"`` (gearmand's ``--libpq-conninfo``); an
empty value uses libpq's defaults (PGHOST, PGDATABASE, … environment variables).
"""

from __future__ import annotations

from typing import ClassVar

import psycopg
import psycopg.conninfo
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from gearstore.stores.base import StoreConfig, StoreError
from gearstore.stores.sql import SqlStore

DRIVER = "postgresql+psycopg"


def postgres_url(db: str | None) -> sa.URL:
    """Turn ``--db`` (URL or libpq conninfo) into a SQLAlchemy URL for psycopg 3."""
    text = (db or "").strip()
    if "://" in text:
        try:
            url = sa.make_url(text)
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"invalid PostgreSQL URL {text!r}: {exc}") from exc
        if url.get_backend_name() not in ("postgresql", "postgres"):
            raise StoreError(
                f"{url.drivername}:// is not a PostgreSQL URL; use postgresql://user@host/db"
            )
        return url.set(drivername=DRIVER)
    try:
        params = psycopg.conninfo.conninfo_to_dict(text)
    except psycopg.ProgrammingError as exc:
        raise StoreError(f"invalid libpq conninfo {text!r}: {exc}") from exc
    fields = {key: str(value) for key, value in params.items() if value is not None}
    port = fields.pop("port") if fields.get("port", "").isdigit() else None
    plain_host = "," not in fields.get("host", "") and not fields.get("host", "").startswith("/")
    # socket directories, several hosts ("h1,h2") and every other libpq keyword travel
    # in the query, which SQLAlchemy hands to psycopg.connect() unchanged
    return sa.URL.create(
        DRIVER,
        username=fields.pop("user", None),
        password=fields.pop("password", None),
        host=fields.pop("host", None) if plain_host else None,
        port=int(port) if port is not None else None,
        database=fields.pop("dbname", None),
        query=fields,
    )


class PostgresStore(SqlStore):
    """The queue in one PostgreSQL table."""

    backend = "PostgreSQL"
    driver_errors: ClassVar[tuple[type[Exception], ...]] = (psycopg.Error,)
    #: seconds before giving up on reaching the server (then StoreUnavailable)
    connect_timeout: int = 10

    def __init__(self, config: StoreConfig) -> None:
        self.url = postgres_url(config.db)
        super().__init__(config)

    def _target(self) -> str:
        if not self.url.host and not self.url.database and not self.url.query:
            return "(libpq defaults)"
        return self.url.render_as_string(hide_password=True).replace(DRIVER, "postgresql", 1)

    def _create_engine(self) -> Engine:
        connect_args: dict[str, object] = {}
        if "connect_timeout" not in self.url.query:
            connect_args["connect_timeout"] = self.connect_timeout
        if "application_name" not in self.url.query:
            connect_args["application_name"] = "gearstore"
        # pool_pre_ping replaces connections that died during an outage, so the writer's
        # next retry of apply() just works; one thread uses the store, so a small pool.
        return sa.create_engine(
            self.url,
            pool_pre_ping=True,
            pool_size=2,
            max_overflow=2,
            connect_args=connect_args,
        )
