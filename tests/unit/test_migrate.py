"""alembic migrations on SQLite: the schema they build equals the model, versions are
tracked per queue table, and a schema from a newer gearstore is refused."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from gearstore import migrate
from gearstore.stores.base import Priority, SchemaTooNew, StoreConfig, StoredJob, StoreError
from gearstore.stores.sql import make_table
from gearstore.stores.sqlite import SqliteStore

Factory = Callable[..., SqliteStore]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'schema.db'}")
    yield eng
    eng.dispose()


def test_migrations_build_exactly_the_model(engine: sa.Engine) -> None:
    assert migrate.upgrade(engine, "q") == migrate.head_revision()
    with engine.connect() as conn:
        assert migrate.compare_schema(conn, "q") == []


def test_the_schema_comparison_can_fail(engine: sa.Engine) -> None:
    migrate.upgrade(engine, "q")
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE q ADD COLUMN extra INTEGER")
        diff = migrate.compare_schema(conn, "q")
    assert [d[0] for d in diff] == ["remove_column"]


def test_scripts_are_found_and_have_one_head() -> None:
    location = migrate.script_location()
    assert (location / "env.py").is_file()
    assert (location / "versions").is_dir()
    assert migrate.head_revision() in migrate.known_revisions()


def test_each_queue_table_has_its_own_version_table(engine: sa.Engine) -> None:
    migrate.upgrade(engine, "first")
    assert migrate.current_revision(engine, "first") == migrate.head_revision()
    assert migrate.current_revision(engine, "second") is None
    migrate.upgrade(engine, "second")
    tables = set(sa.inspect(engine).get_table_names())
    assert {"first", "first_alembic_version", "second", "second_alembic_version"} <= tables
    assert "alembic_version" not in tables  # other applications' alembic is left alone


def test_upgrade_is_idempotent_and_keeps_data(engine: sa.Engine) -> None:
    migrate.upgrade(engine, "q")
    with engine.begin() as conn:
        conn.execute(
            make_table(sa.MetaData(), "q").insert(),
            {"id": 1, "function_name": b"f", "unique_key": b"", "priority": 1, "data": b"d"},
        )
    assert migrate.upgrade(engine, "q") == migrate.head_revision()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM q").scalar() == 1


def test_downgrade_removes_the_table(engine: sa.Engine) -> None:
    migrate.upgrade(engine, "q")
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn, "q"), "base")
    assert "q" not in sa.inspect(engine).get_table_names()
    assert migrate.current_revision(engine, "q") is None


def stamp(engine: sa.Engine, table: str, revision: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {migrate.version_table(table)} SET version_num = :r"),
            {"r": revision},
        )


def test_a_newer_schema_is_refused(engine: sa.Engine) -> None:
    migrate.upgrade(engine, "q")
    stamp(engine, "q", "9999_from_the_future")
    expected = (
        r"the schema in the database is at revision 9999_from_the_future, newer than this "
        rf"gearstore \(head {migrate.head_revision()}\); upgrade gearstore"
    )
    with pytest.raises(SchemaTooNew, match=expected):
        migrate.upgrade(engine, "q")
    with pytest.raises(SchemaTooNew):
        migrate.check_at_head(engine, "q")


def test_store_open_refuses_a_newer_schema(
    sqlite_store_factory: Factory, sqlite_path: Path
) -> None:
    store = sqlite_store_factory()
    store.open()
    stamp(store.engine, store.table_name, "ffff")
    store.close()
    for migrate_flag in (True, False):
        fresh = sqlite_store_factory(migrate=migrate_flag)
        with pytest.raises(SchemaTooNew, match=f"schema in SQLite {sqlite_path}"):
            fresh.open()
    # the refusal released the file lock, and `db current` still reports the revision
    config = StoreConfig(kind="sqlite", db=str(sqlite_path))
    assert migrate.db_current(config) == "ffff"


def test_without_migrate_a_missing_schema_is_refused_until_db_upgrade(
    sqlite_store_factory: Factory, sqlite_path: Path
) -> None:
    config = StoreConfig(kind="sqlite", db=str(sqlite_path), migrate=False)
    with pytest.raises(StoreError, match="run `gearstore db upgrade` first"):
        sqlite_store_factory(migrate=False).open()
    assert migrate.db_current(config) is None
    assert migrate.db_upgrade(config) == migrate.head_revision()
    assert migrate.db_current(config) == migrate.head_revision()
    store = sqlite_store_factory(migrate=False)
    store.open()
    store.apply([StoredJob(1, b"f", b"", Priority.HIGH, None, b"")], [])
    store.close()


def test_db_commands_use_the_configured_table(sqlite_path: Path) -> None:
    config = StoreConfig(kind="sqlite", db=str(sqlite_path), table="other_queue")
    migrate.db_upgrade(config)
    engine = sa.create_engine(f"sqlite:///{sqlite_path}")
    assert migrate.current_revision(engine, "other_queue") == migrate.head_revision()
    assert migrate.current_revision(engine, "gearstore_queue") is None
    engine.dispose()


def test_db_commands_refuse_stores_without_a_schema(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="manages SQL schemas only"):
        migrate.db_current(StoreConfig(kind="builtin"))


def test_a_foreign_table_of_the_same_name_is_not_touched(engine: sa.Engine) -> None:
    with engine.begin() as conn:  # gearmand's libsqlite3 layout
        conn.exec_driver_sql(
            "CREATE TABLE gearman_queue (unique_key TEXT, function_name TEXT, priority INTEGER, "
            "data BLOB, when_to_run INTEGER, PRIMARY KEY (unique_key, function_name))"
        )
    with pytest.raises(StoreError, match="table gearman_queue that gearstore did not create"):
        migrate.upgrade(engine, "gearman_queue")
    columns = [c["name"] for c in sa.inspect(engine).get_columns("gearman_queue")]
    assert columns[0] == "unique_key"
