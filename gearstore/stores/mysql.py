"""MySQL / MariaDB queue store (PyMySQL): ``gearstore -q mysql --db mysql://user:pw@host/db``.

Data layout: the shared table of :mod:`gearstore.stores.sql` in InnoDB, one row per
job keyed by job id; names and unique keys in BLOB, data in LONGBLOB, so a unique key
may repeat (gearmand's MySQL store rejects that). Replay reads the rows in id order, a
keyset page at a time, streamed with an unbuffered cursor.

PyMySQL sends binary values as hex literals, so a row costs about twice its bytes on
the wire, and the server refuses any statement longer than its ``max_allowed_packet``.
open() reads that limit and apply() refuses an oversized job up front with a StoreError
that says which setting to raise, instead of a dropped connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import pymysql  # no stubs shipped; see types-PyMySQL
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from gearstore.stores.base import StoreConfig, StoredJob, StoreError, StoreUnavailable
from gearstore.stores.sql import SqlStore

DRIVER = "mysql+pymysql"

#: bytes of SQL around one row's values in a multi-row INSERT (names, commas, _binary X'')
_ROW_OVERHEAD = 256

#: server error codes for "packet too large" (ER_NET_PACKET_TOO_LARGE) and
#: "result would exceed max_allowed_packet" (ER_WARN_ALLOWED_PACKET_OVERFLOWED)
_PACKET_ERRORS = frozenset({1153, 1301})


def mysql_url(db: str | None) -> sa.URL:
    """Turn ``--db`` (``mysql://`` or ``mariadb://`` URL) into a URL for PyMySQL."""
    text = (db or "").strip()
    if "://" not in text:
        raise StoreError(
            f"the mysql store needs --db mysql://user:password@host:port/database, got {text!r}"
        )
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"invalid MySQL URL {text!r}: {exc}") from exc
    if url.get_backend_name() not in ("mysql", "mariadb"):
        raise StoreError(f"{url.drivername}:// is not a MySQL URL; use mysql://user@host/db")
    if not url.database:
        raise StoreError(f"the MySQL URL {text!r} names no database; add /DBNAME at its end")
    if "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})
    return url.set(drivername=DRIVER)


def wire_size(job: StoredJob) -> int:
    """Bytes one job occupies in PyMySQL's INSERT statement (hex: two per byte)."""
    size = len(job.function) + len(job.unique) + len(job.data) + len(job.reducer or b"")
    return 2 * size + _ROW_OVERHEAD


def packet_hint(limit: int, need: int | None = None) -> str:
    """The operator's instructions for a too-small max_allowed_packet."""
    want = max(need or 0, 256 * 1024 * 1024)
    return (
        f"the server's max_allowed_packet is {limit} bytes; raise it (max_allowed_packet="
        f"{want // (1024 * 1024)}M under [mysqld], or SET GLOBAL max_allowed_packet={want}); "
        "see docs/stores-sql.md"
    )


class MysqlStore(SqlStore):
    """The queue in one MySQL/MariaDB InnoDB table."""

    backend = "MySQL"
    driver_errors: ClassVar[tuple[type[Exception], ...]] = (pymysql.err.Error,)
    connect_timeout: int = 10

    def __init__(self, config: StoreConfig) -> None:
        self.url = mysql_url(config.db)
        self.max_allowed_packet: int | None = None
        super().__init__(config)

    def _target(self) -> str:
        return self.url.render_as_string(hide_password=True).replace(DRIVER, "mysql", 1)

    def _create_engine(self) -> Engine:
        return sa.create_engine(
            self.url,
            pool_pre_ping=True,
            # the server closes idle connections after wait_timeout (8 h by default)
            pool_recycle=3600,
            pool_size=2,
            max_overflow=2,
            connect_args={"connect_timeout": self.connect_timeout},
        )

    def _after_open(self, conn: Connection) -> None:
        self.max_allowed_packet = self._read_packet_limit(conn)

    @staticmethod
    def _read_packet_limit(conn: Connection) -> int:
        return int(conn.execute(sa.text("SELECT @@global.max_allowed_packet")).scalar_one())

    def _refresh_packet_limit(self) -> int:
        """Read max_allowed_packet again: an operator may have changed it since open()."""
        try:
            with self.engine.connect() as conn:
                self.max_allowed_packet = self._read_packet_limit(conn)
        except self._caught as exc:
            raise self._translate(exc, "read max_allowed_packet") from exc
        return self.max_allowed_packet

    def _too_big(self, add: Sequence[StoredJob], limit: int) -> StoreError | None:
        biggest = max(add, key=wire_size)
        need = wire_size(biggest)
        if need <= limit:
            return None
        return StoreError(
            f"job {biggest.id} ({len(biggest.data)} bytes of data) needs a {need}-byte "
            f"statement in {self.description}, but {packet_hint(limit, need)}"
        )

    def _check_batch(self, add: Sequence[StoredJob]) -> None:
        if not add or self.max_allowed_packet is None:
            return
        if self._too_big(add, self.max_allowed_packet) is not None:
            error = self._too_big(add, self._refresh_packet_limit())
            if error is not None:
                raise error

    def apply(self, add: Sequence[StoredJob], remove: Sequence[int]) -> None:
        """Write one batch; a statement the server dropped for its size is a StoreError."""
        try:
            super().apply(add, remove)
        except StoreUnavailable as exc:
            # A too-long statement makes the server hang up ("server has gone away"),
            # which looks like an outage; retrying would never succeed, so say why.
            if not add:
                raise
            try:
                limit = self._refresh_packet_limit()
            except StoreError:
                raise exc from exc.__cause__  # still down: report the outage
            error = self._too_big(add, limit)
            if error is not None:
                raise error from exc
            raise

    def _translate(self, exc: Exception, action: str) -> StoreError:
        orig = getattr(exc, "orig", None) or exc
        code = orig.args[0] if isinstance(orig, pymysql.err.Error) and orig.args else None
        if code in _PACKET_ERRORS:
            limit = self.max_allowed_packet or 0
            return StoreError(f"could not {action} in {self.description}: {packet_hint(limit)}")
        return super()._translate(exc, action)
