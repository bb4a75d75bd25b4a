"""The throwaway database servers the store tests rely on.

The helpers are checked without a network; the lifecycle tests start the real
servers (the session's ``postgres_server`` / ``mysql_server``), because stop, kill and
restart on the same port and data directory are what outage tests build on.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from gearstore.stores.base import Priority, QueueStore, StoredJob
from tests.dbservers import (
    DbServer,
    ExternalServer,
    LocalServer,
    _group_alive,
    drop_tables,
    sqlalchemy_url,
    unique_table_name,
)


def test_table_names_are_unique_short_and_plain() -> None:
    """Names fit the stores' 40-character limit and need no quoting."""
    names = {unique_table_name("test_x[PostgreSQL-big data ü]" * 5) for _ in range(100)}
    assert len(names) == 100
    for name in names:
        assert len(name) <= 36
        assert name.replace("_", "").isalnum() and name.isascii() and name == name.lower()


def test_urls_get_installed_drivers() -> None:
    """Bare postgresql:// and mysql:// URLs are given psycopg 3 and PyMySQL."""
    assert sqlalchemy_url("postgresql://u@h:1/d") == "postgresql+psycopg://u@h:1/d"
    assert sqlalchemy_url("mysql://root@h:2/d") == "mysql+pymysql://root@h:2/d"
    assert sqlalchemy_url("sqlite:///x") == "sqlite:///x"


def test_external_server_cannot_be_stopped() -> None:
    """Outage tests on someone else's server skip instead of taking it down."""
    server = ExternalServer("PostgreSQL", "postgresql://u@h/d")
    assert server.running and not server.controllable
    with pytest.raises(pytest.skip.Exception, match="not started by the tests"):
        server.stop()


def test_group_alive_sees_own_group_only() -> None:
    """The /proc scan finds our own process group and not an unused one."""
    assert _group_alive(os.getpgrp())
    assert not _group_alive(2**22 + 12345)  # above the default pid_max


# --- the real servers ----------------------------------------------------------------------


@pytest.fixture(params=["postgres", "mysql"])
def server(request: pytest.FixtureRequest) -> DbServer:
    """Each session server in turn."""
    found: DbServer = request.getfixturevalue(f"{request.param}_server")
    return found


@pytest.fixture
def store_factory(request: pytest.FixtureRequest, server: DbServer) -> Callable[[], QueueStore]:
    """The store factory for the same backend as ``server``."""
    kind = "postgres" if "postgres" in server.url else "mysql"
    factory: Callable[[], QueueStore] = request.getfixturevalue(f"{kind}_store_factory")
    return factory


def _count(url: str, table: str) -> int:
    engine = sa.create_engine(sqlalchemy_url(url), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def test_stop_kill_restart_keep_port_and_data(server: DbServer) -> None:
    """Committed rows survive a clean stop and a SIGKILL; the URL stays valid."""
    server.require_control()
    assert isinstance(server, LocalServer)
    table = unique_table_name("lifecycle")
    engine = sa.create_engine(sqlalchemy_url(server.url), poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {table} (n INTEGER)"))
            conn.execute(sa.text(f"INSERT INTO {table} VALUES (1), (2)"))
        port = server.port
        server.stop()
        assert not server.running
        with pytest.raises(sa.exc.OperationalError):
            _count(server.url, table)
        server.start()
        assert server.running and server.port == port
        assert _count(server.url, table) == 2

        with engine.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO {table} VALUES (3)"))
        server.kill()
        assert not server.running
        server.start()
        assert _count(server.url, table) == 3  # committed before the kill: still there
    finally:
        if not server.running:
            server.start()
        engine.dispose()
        drop_tables(server.url, table)


def test_store_factory_shares_a_table_and_survives_a_restart(
    server: DbServer, store_factory: Callable[[], QueueStore]
) -> None:
    """Two stores from one factory see the same table, also after the server died."""
    server.require_control()
    first = store_factory()
    first.open()
    job = StoredJob(1, b"f", b"u", Priority.LOW, None, b"\x00" * 1000)
    first.apply([job], [])
    first.close()
    server.kill()
    server.start()
    second = store_factory()
    second.open()
    assert list(second.replay()) == [job]
    second.close()
