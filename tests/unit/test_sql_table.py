"""The shared SQL table definition and the dialect modules' URL handling (no database)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.schema import CreateTable

from gearstore.stores.base import Priority, StoreConfig, StoredJob, StoreError
from gearstore.stores.mysql import MysqlStore, mysql_url, wire_size
from gearstore.stores.postgres import PostgresStore, postgres_url
from gearstore.stores.sql import DEFAULT_TABLE, make_table, valid_table_name


def ddl(dialect: sa.Dialect, name: str = "q") -> str:
    return str(CreateTable(make_table(sa.MetaData(), name)).compile(dialect=dialect))


def test_the_job_id_is_the_only_key() -> None:
    table = make_table(sa.MetaData(), "q")
    assert [c.name for c in table.primary_key.columns] == ["id"]
    assert not any(isinstance(c, sa.UniqueConstraint) for c in table.constraints)
    assert not table.indexes
    assert table.c.id.autoincrement is False
    assert table.c.when_epoch.nullable and table.c.reducer.nullable
    assert not table.c.function_name.nullable and not table.c.unique_key.nullable


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [
        (
            postgresql.dialect(),
            ["id BIGINT NOT NULL", "function_name BYTEA NOT NULL", "data BYTEA NOT NULL"],
        ),
        (
            mysql.dialect(),
            ["id BIGINT NOT NULL", "function_name BLOB NOT NULL", "data LONGBLOB NOT NULL"],
        ),
        (sqlite.dialect(), ["id INTEGER NOT NULL", "unique_key BLOB NOT NULL", "data BLOB"]),
    ],
    ids=["postgresql", "mysql", "sqlite"],
)
def test_binary_types_per_dialect(dialect: sa.Dialect, expected: list[str]) -> None:
    text = ddl(dialect)
    for fragment in expected:
        assert fragment in text
    assert "priority SMALLINT NOT NULL" in text
    assert "when_epoch BIGINT," in text
    assert "PRIMARY KEY (id)" in text


def test_mysql_table_is_innodb() -> None:
    assert "ENGINE=InnoDB" in ddl(mysql.dialect())


def test_table_names() -> None:
    assert valid_table_name(None) == DEFAULT_TABLE == "gearstore_queue"
    assert valid_table_name("Queue_2") == "Queue_2"
    assert valid_table_name("x" * 40) == "x" * 40
    for bad in ["", "2queue", "my-queue", "q; DROP TABLE x", "q q", "x" * 41, "ünï"]:
        with pytest.raises(StoreError, match="invalid table name"):
            valid_table_name(bad)


@pytest.mark.parametrize(
    ("db", "rendered"),
    [
        ("postgres://u:pw@db.example:6432/jobs", "postgresql+psycopg://u:pw@db.example:6432/jobs"),
        ("postgresql://u@/jobs?host=/run/pg", "postgresql+psycopg://u@/jobs?host=%2Frun%2Fpg"),
        ("postgresql+psycopg2://h/d", "postgresql+psycopg://h/d"),
        (
            "host=db.example port=6432 dbname=jobs user=u",
            "postgresql+psycopg://u@db.example:6432/jobs",
        ),
        (
            "host=/run/pg dbname=jobs sslmode=disable",
            "postgresql+psycopg:///jobs?host=%2Frun%2Fpg&sslmode=disable",
        ),
        ("", "postgresql+psycopg://"),
        (None, "postgresql+psycopg://"),
    ],
)
def test_postgres_urls_and_conninfo(db: str | None, rendered: str) -> None:
    assert postgres_url(db).render_as_string(hide_password=False) == rendered


@pytest.mark.parametrize("db", ["mysql://h/d", "host = = x", "sqlite:///x.db"])
def test_bad_postgres_targets_are_explained(db: str) -> None:
    with pytest.raises(StoreError, match=r"PostgreSQL|conninfo"):
        postgres_url(db)


def test_postgres_description_hides_the_password() -> None:
    store = PostgresStore(StoreConfig(kind="postgres", db="postgresql://u:secret@h/d"))
    assert "secret" not in store.description
    assert store.description == "PostgreSQL postgresql://u:***@h/d table gearstore_queue"


@pytest.mark.parametrize(
    ("db", "rendered"),
    [
        ("mysql://u:pw@h:3307/jobs", "mysql+pymysql://u:pw@h:3307/jobs?charset=utf8mb4"),
        ("mariadb://u@h/jobs", "mysql+pymysql://u@h/jobs?charset=utf8mb4"),
        ("mysql+pymysql://u@h/jobs?charset=latin1", "mysql+pymysql://u@h/jobs?charset=latin1"),
    ],
)
def test_mysql_urls(db: str, rendered: str) -> None:
    assert mysql_url(db).render_as_string(hide_password=False) == rendered


@pytest.mark.parametrize(
    ("db", "match"),
    [
        (None, "needs --db mysql://"),
        ("host=h dbname=d", "needs --db mysql://"),
        ("mysql://u@h", "names no database"),
        ("postgresql://u@h/d", "not a MySQL URL"),
    ],
)
def test_bad_mysql_targets_are_explained(db: str | None, match: str) -> None:
    with pytest.raises(StoreError, match=match):
        MysqlStore(StoreConfig(kind="mysql", db=db))


def test_mysql_wire_size_counts_hex_encoding() -> None:
    job = StoredJob(1, b"f" * 10, b"u" * 5, Priority.LOW, None, b"d" * 1000, b"r")
    assert wire_size(job) == 2 * (10 + 5 + 1000 + 1) + 256
