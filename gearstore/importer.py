"""Read the queue a C gearmand left behind, for ``gearstore db import-gearmand``.

gearmand's SQLite, PostgreSQL and MySQL queue plugins all keep one row per background
job in a table of the same shape (default name ``gearman_queue``; ``queue`` for
PostgreSQL)::

    unique_key     TEXT / VARCHAR(64)   part of UNIQUE (unique_key, function_name)
    function_name  TEXT / VARCHAR(255)
    priority       INTEGER              gearman_job_priority_t: 0 HIGH, 1 NORMAL, 2 LOW
    data           BLOB / BYTEA / LONGBLOB
    when_to_run    INTEGER              epoch seconds, 0 for "now" (absent before 0.21)

There is no id or timestamp, so submission order can only be recovered from the
physical row order (SQLite ``rowid``, PostgreSQL ``ctid``, InnoDB's insertion order).
Rows are read one priority at a time in that order, so jobs of equal priority keep
their relative order, then renumbered from the caller's ``first_id`` and written to a
gearstore store in batches. gearmand's priority numbers happen to equal
:class:`~gearstore.stores.base.Priority`, but the mapping is explicit so a change on
either side cannot silently reorder anyone's jobs.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa

from gearstore.stores.base import Priority, QueueStore, StoredJob, StoreError

log = logging.getLogger(__name__)

#: gearmand's default table name for each SQLAlchemy dialect it has a plugin for
DEFAULT_TABLES: Mapping[str, str] = {
    "sqlite": "gearman_queue",
    "postgresql": "queue",
    "mysql": "gearman_queue",
}

#: gearman_job_priority_t (libgearman-1.0/priority.h) -> gearstore priority
GEARMAND_PRIORITIES: Mapping[int, Priority] = {
    0: Priority.HIGH,
    1: Priority.NORMAL,
    2: Priority.LOW,
}

_DRIVERS = {
    "postgresql": ("postgresql+psycopg", "postgres"),
    "postgres": ("postgresql+psycopg", "postgres"),
    "mysql": ("mysql+pymysql", "mysql"),
    "mariadb": ("mysql+pymysql", "mysql"),
}


class GearmandImportError(StoreError):
    """The gearmand queue could not be read or imported; the message says why.

    A :class:`StoreError`, so commands that report store errors report this one too.
    """


class GearmandJob(NamedTuple):
    """One job as gearmand stored it, already mapped to gearstore's types."""

    function: bytes
    unique: bytes
    priority: Priority
    when: int | None
    data: bytes


def to_sqlalchemy_url(source: str) -> sa.URL:
    """A SQLAlchemy URL for ``source``: a URL, or a plain path to gearmand's SQLite file.

    ``postgresql://`` and ``mysql://`` get the drivers gearstore installs (psycopg 3,
    PyMySQL). SQLite files are opened read-only, so a typo cannot create an empty file.
    """
    if "://" not in source:
        return _read_only_sqlite(source)
    url = sa.make_url(source)
    if url.get_backend_name() == "sqlite" and url.database and not url.query.get("uri"):
        return _read_only_sqlite(url.database)
    if url.drivername in _DRIVERS:
        url = url.set(drivername=_DRIVERS[url.drivername][0])
    return url


def _read_only_sqlite(path: str) -> sa.URL:
    return sa.make_url(f"sqlite:///file:{urllib.parse.quote(path)}?mode=ro&uri=true")


def source_from_gearmand_options(queue_type: str, options: Mapping[str, str]) -> tuple[str, str]:
    """(URL, table) from the queue flags gearmand was started with, minus the ``--``.

    ``options`` holds e.g. ``{"libsqlite3-db": "/var/lib/gearman/q.db"}``,
    ``{"libpq-conninfo": "host=db dbname=gearman"}`` or the ``mysql-*`` flags; flags
    left out get gearmand's defaults.
    """
    kind = queue_type.lower()
    if kind in {"libsqlite3", "sqlite"}:
        if "libsqlite3-db" not in options:
            raise GearmandImportError("gearmand's SQLite queue needs --libsqlite3-db FILE")
        return options["libsqlite3-db"], options.get("libsqlite3-table", "gearman_queue")
    if kind in {"postgres", "postgresql", "libpq"}:
        url = _url_from_conninfo(options.get("libpq-conninfo", ""))
        return url.render_as_string(hide_password=False), options.get("libpq-table", "queue")
    if kind == "mysql":
        mysql = sa.URL.create(
            "mysql",
            username=options.get("mysql-user") or None,
            password=options.get("mysql-password") or None,
            host=options.get("mysql-host", "localhost"),
            port=int(options.get("mysql-port", "3306")),
            database=options.get("mysql-db") or None,
        )
        return mysql.render_as_string(hide_password=False), options.get(
            "mysql-table", "gearman_queue"
        )
    raise GearmandImportError(
        f"cannot import gearmand's {queue_type!r} queue; gearstore reads gearmand's "
        "libsqlite3, Postgres and MySQL queues (for libmemcached and redis, drain the "
        "queue with workers before switching)"
    )


def _url_from_conninfo(conninfo: str) -> sa.URL:
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError as exc:
        raise GearmandImportError(
            "reading gearmand's PostgreSQL queue needs psycopg; run: "
            "pip install 'gearstore[postgres]'"
        ) from exc
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(conninfo).items()}
    except Exception as exc:  # psycopg.ProgrammingError; any parse failure means the same
        raise GearmandImportError(f"cannot parse --libpq-conninfo {conninfo!r}: {exc}") from exc
    host = params.pop("host", None)
    query: dict[str, str] = {}
    if host and host.startswith("/"):  # a Unix-socket directory goes in the query string
        query["host"] = host
        host = None
    port = params.pop("port", None)
    url = sa.URL.create(
        "postgresql",
        username=params.pop("user", None),
        password=params.pop("password", None),
        host=host,
        port=int(port) if port else None,
        database=params.pop("dbname", None),
        query={**query, **params},
    )
    return url


def _describe(url: sa.URL) -> str:
    """The source for messages: a SQLite file's path, else the URL without password."""
    if url.get_backend_name() == "sqlite" and (url.database or "").startswith("file:"):
        return urllib.parse.unquote((url.database or "")[len("file:") :])
    return url.render_as_string(hide_password=True)


def _engine(url: sa.URL) -> sa.Engine:
    try:
        return sa.create_engine(url, poolclass=sa.NullPool)
    except ImportError as exc:
        extra = _DRIVERS.get(url.get_backend_name(), ("", ""))[1]
        hint = f"; run: pip install 'gearstore[{extra}]'" if extra else ""
        raise GearmandImportError(
            f"cannot read {_describe(url)}: the driver is not installed ({exc.name}){hint}"
        ) from exc


def _as_bytes(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[bytes]:
    """The column's stored bytes, whatever its declared type or the client encoding."""
    if dialect == "postgresql":
        if isinstance(column.type, sa.LargeBinary):
            return sa.type_coerce(column, sa.LargeBinary)
        # Same-encoding conversion is a no-op: the bytes exactly as gearmand wrote them.
        encoded = sa.func.convert_to(column, sa.func.getdatabaseencoding())
        return sa.type_coerce(encoded, sa.LargeBinary)
    # SQLite keeps non-UTF-8 text as is, and CAST AS BLOB reads it without decoding.
    return sa.cast(column, sa.LargeBinary)


def _physical_order(dialect: str) -> Sequence[sa.ColumnElement[Any]]:
    if dialect == "sqlite":
        return [sa.literal_column("rowid")]
    if dialect == "postgresql":
        return [sa.literal_column("ctid")]
    return []  # InnoDB without a primary key scans in insertion order


def read_gearmand_queue(source: str, table: str | None = None) -> Iterator[GearmandJob]:
    """Yield every job in gearmand's queue table: HIGH first, then NORMAL, then LOW,
    each in the order gearmand stored them.

    ``source`` is a SQLAlchemy URL or a path to gearmand's SQLite file; ``table``
    defaults to gearmand's default for that database. Rows are streamed, not loaded
    all at once. Raises :class:`GearmandImportError` before yielding anything if the
    table is missing or holds a priority gearmand never writes.
    """
    url = to_sqlalchemy_url(source)
    engine = _engine(url)
    dialect = engine.dialect.name
    name = table or DEFAULT_TABLES.get(dialect, "gearman_queue")
    try:
        with engine.connect() as conn:
            queue = _reflect(conn, url, name)
            has_when = "when_to_run" in queue.c
            _check_priorities(conn, url, queue)
            columns = [
                _as_bytes(queue.c.function_name, dialect),
                _as_bytes(queue.c.unique_key, dialect),
                queue.c.when_to_run if has_when else sa.null(),
                _as_bytes(queue.c.data, dialect),
            ]
            streaming = conn.execution_options(stream_results=True, yield_per=200)
            for number, priority in GEARMAND_PRIORITIES.items():
                query = (
                    sa.select(*columns)
                    .where(queue.c.priority == number)
                    .order_by(*_physical_order(dialect))
                )
                for function, unique, when, data in streaming.execute(query):
                    yield GearmandJob(
                        function=bytes(function or b""),
                        unique=bytes(unique or b""),
                        priority=priority,
                        when=int(when) if when else None,  # gearmand writes 0 for "now"
                        data=bytes(data or b""),
                    )
    except sa.exc.SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise GearmandImportError(
            f"reading gearmand's queue table {name!r} from {_describe(url)} failed: {detail}"
        ) from exc
    finally:
        engine.dispose()


def _reflect(conn: sa.Connection, url: sa.URL, name: str) -> sa.Table:
    try:
        queue = sa.Table(name, sa.MetaData(), autoload_with=conn)
    except sa.exc.NoSuchTableError:
        raise GearmandImportError(
            f"there is no table {name!r} in {_describe(url)}; pass the table gearmand used "
            "(its --libsqlite3-table, --libpq-table or --mysql-table)"
        ) from None
    missing = {"unique_key", "function_name", "priority", "data"} - set(queue.c.keys())
    if missing:
        raise GearmandImportError(
            f"table {name!r} in {_describe(url)} is not a gearmand queue: it has no "
            f"column {', '.join(sorted(missing))}"
        )
    return queue


def _check_priorities(conn: sa.Connection, url: sa.URL, queue: sa.Table) -> None:
    known = list(GEARMAND_PRIORITIES)
    odd = sa.or_(queue.c.priority.is_(None), queue.c.priority.not_in(known))
    bad = conn.execute(sa.select(sa.func.count()).where(odd)).scalar_one()
    if bad:
        example = conn.execute(
            sa.select(queue.c.function_name, queue.c.unique_key, queue.c.priority)
            .where(odd)
            .limit(1)
        ).one()
        raise GearmandImportError(
            f"{bad} row(s) of {queue.name!r} in {_describe(url)} have a priority gearmand "
            f"never writes (expected 0, 1 or 2), e.g. function {example[0]!r} unique "
            f"{example[1]!r} priority {example[2]!r}; fix or delete them, then import again"
        )


def import_gearmand(
    source_url: str,
    source_table: str | None,
    target_store: QueueStore,
    first_id: int,
    *,
    batch_jobs: int = 1000,
    batch_bytes: int = 32 << 20,
) -> int:
    """Copy gearmand's queue into an opened gearstore store; return how many jobs.

    Jobs get new ids ``first_id, first_id + 1, ...`` in :func:`read_gearmand_queue`'s
    order (pass one more than the largest id already stored) and are written through
    ``target_store.apply`` in batches of at most ``batch_jobs`` jobs or about
    ``batch_bytes`` of payload, each batch atomic. The source is only read: stop
    gearmand first, and run this once, as a second run imports the jobs again.
    """
    began = time.monotonic()
    batch: list[StoredJob] = []
    size = 0
    done = 0

    def flush() -> None:
        nonlocal batch, size, done
        if not batch:
            return
        try:
            target_store.apply(batch, ())
        except StoreError as exc:
            imported = (
                f"jobs {first_id}..{first_id + done - 1} were imported before it"
                if done
                else "nothing was imported"
            )
            raise GearmandImportError(
                f"writing to {target_store.description} failed: {exc}; {imported}. Fix the "
                "store, then import into an empty store (or remove those ids) and run again"
            ) from exc
        done += len(batch)
        batch, size = [], 0

    for job in read_gearmand_queue(source_url, source_table):
        batch.append(
            StoredJob(
                id=first_id + done + len(batch),
                function=job.function,
                unique=job.unique,
                priority=job.priority,
                when=job.when,
                data=job.data,
            )
        )
        size += len(job.data) + len(job.unique) + len(job.function)
        if len(batch) >= batch_jobs or size >= batch_bytes:
            flush()
    flush()
    log.info(
        "imported %d jobs from gearmand's queue at %s in %.2fs",
        done,
        _describe(to_sqlalchemy_url(source_url)),
        time.monotonic() - began,
    )
    return done
