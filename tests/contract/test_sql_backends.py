"""What the SQL stores promise beyond the shared contract, on their real servers:
the migrations build the model's schema on every dialect, 64-bit values survive, and
after a dropped connection or a database crash the next apply() works by itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from gearstore import migrate
from gearstore.stores.base import Priority, QueueStore, StoredJob, StoreError, StoreUnavailable
from gearstore.stores.sql import SqlStore

Factory = Callable[[], QueueStore]


def fixture_or_skip(request: pytest.FixtureRequest, name: str) -> Any:
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        pytest.skip(f"{name} fixture not available yet")


def open_sql_store(factory: Factory) -> SqlStore:
    store = factory()
    assert isinstance(store, SqlStore)
    store.open()
    return store


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def sql_factory(request: pytest.FixtureRequest) -> Factory:
    factory: Factory = fixture_or_skip(request, f"{request.param}_store_factory")
    return factory


@pytest.fixture(params=["postgres", "mysql"])
def server_backend(request: pytest.FixtureRequest) -> tuple[str, Any, Factory]:
    """(name, server controller, store factory) for the backends that have a server."""
    name = request.param
    factory: Factory = fixture_or_skip(request, f"{name}_store_factory")
    return name, fixture_or_skip(request, f"{name}_server"), factory


def job(job_id: int, data: bytes = b"payload") -> StoredJob:
    return StoredJob(job_id, b"f", b"u", Priority.NORMAL, None, data)


def test_migrations_build_exactly_the_model(sql_factory: Factory) -> None:
    store = open_sql_store(sql_factory)
    try:
        with store.engine.connect() as conn:
            assert migrate.compare_schema(conn, store.table_name) == []
            assert migrate.current_revision(conn, store.table_name) == migrate.head_revision()
    finally:
        store.close()


def test_64_bit_ids_and_epochs(sql_factory: Factory) -> None:
    jobs = [
        StoredJob(2**63 - 1, b"f", b"", Priority.LOW, 2**63 - 1, b""),
        StoredJob(2**53 + 1, b"f", b"", Priority.HIGH, 2**40, b"x"),
        StoredJob(2**31 + 5, b"f", b"", Priority.NORMAL, -1, b"y"),
    ]
    store = open_sql_store(sql_factory)
    store.apply(jobs, [])
    store.close()
    store = open_sql_store(sql_factory)
    assert list(store.replay()) == sorted(jobs, key=lambda j: j.id)
    store.close()


def test_open_is_idempotent_and_other_tables_are_untouched(sql_factory: Factory) -> None:
    store = open_sql_store(sql_factory)
    store.open()  # already open: no-op
    store.apply([job(1)], [])
    assert [j.id for j in store.replay()] == [1]
    assert migrate.current_revision(store.engine, "gs_never_created") is None
    assert "gs_never_created" not in sa.inspect(store.engine).get_table_names()
    store.close()


def kill_store_connections(name: str, store: SqlStore) -> None:
    """Have the server drop the connection the store will use next, as a restart, a
    failover or an idle timeout would (the store is used by one thread, so its pool
    hands out the same connection again)."""
    with store.engine.connect() as conn:
        own = "SELECT pg_backend_pid()" if name == "postgres" else "SELECT CONNECTION_ID()"
        victim = conn.exec_driver_sql(own).scalar()
    admin = sa.create_engine(store.engine.url, poolclass=sa.NullPool)
    try:
        with admin.connect() as conn:
            if name == "postgres":
                conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": victim})
            else:
                conn.exec_driver_sql(f"KILL {int(victim)}")
    finally:
        admin.dispose()


def test_apply_works_after_the_server_dropped_the_connection(
    server_backend: tuple[str, Any, Factory],
) -> None:
    name, _server, factory = server_backend
    store = open_sql_store(factory)
    store.apply([job(1)], [])
    kill_store_connections(name, store)
    store.apply([job(2)], [1])  # pool_pre_ping replaces the dead connection
    kill_store_connections(name, store)
    assert [j.id for j in store.replay()] == [2]
    store.close()


def test_an_outage_is_unavailable_and_the_next_apply_recovers(
    server_backend: tuple[str, Any, Factory],
) -> None:
    name, server, factory = server_backend
    server.require_control()
    store = open_sql_store(factory)
    store.apply([job(1), job(2)], [])
    server.kill()  # SIGKILL: what was committed must still be there afterwards
    with pytest.raises(StoreUnavailable) as info:
        store.apply([job(3)], [1])
    message = str(info.value)
    assert store.backend in message and "running and reachable" in message
    with pytest.raises(StoreUnavailable):
        list(store.replay())
    server.start()
    store.apply([job(3)], [1])  # no reconnect call: the store finds its way back
    assert [j.id for j in store.replay()] == [2, 3]
    store.close()


def test_mysql_refuses_a_job_larger_than_max_allowed_packet(
    request: pytest.FixtureRequest,
) -> None:
    factory: Factory = fixture_or_skip(request, "mysql_store_factory")
    server = fixture_or_skip(request, "mysql_server")
    server.require_control()  # changes a global setting: only on our own server
    store = open_sql_store(factory)
    admin = sa.create_engine(store.engine.url, poolclass=sa.NullPool)
    with admin.connect() as conn:
        original = conn.exec_driver_sql("SELECT @@global.max_allowed_packet").scalar()
        conn.exec_driver_sql(f"SET GLOBAL max_allowed_packet = {4 * 1024 * 1024}")
    try:
        store.engine.dispose()  # a connection keeps the limit it started with
        big = job(2, b"\x00" * (3 * 1024 * 1024))  # 6 MiB as hex
        with pytest.raises(StoreError, match="max_allowed_packet is 4194304") as info:
            store.apply([job(1), big], [])
        assert not isinstance(info.value, StoreUnavailable)  # retrying would not help
        # the same when only the server notices (a limit lowered behind our back)
        store.max_allowed_packet = 2**30
        with pytest.raises(StoreError, match="max_allowed_packet=256M") as info:
            store.apply([job(1), big], [])
        assert not isinstance(info.value, StoreUnavailable)
        store.apply([job(3)], [])
        assert [j.id for j in store.replay()] == [3]
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"SET GLOBAL max_allowed_packet = {int(original)}")
        admin.dispose()
        store.close()
