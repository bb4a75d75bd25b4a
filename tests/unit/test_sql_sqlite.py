"""SQLite-specific behaviour: file lock, damaged files, pragmas, paging, busy database."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from gearstore.stores.base import (
    Priority,
    StoreConfig,
    StoreCorrupt,
    StoredJob,
    StoreError,
    StoreLocked,
    StoreUnavailable,
)
from gearstore.stores.sqlite import SqliteStore

Factory = Callable[..., SqliteStore]


def job(job_id: int, data: bytes = b"payload") -> StoredJob:
    return StoredJob(job_id, b"f", b"", Priority.NORMAL, None, data)


OPEN_IN_CHILD = textwrap.dedent(
    """
    import sys
    from gearstore.stores.base import StoreConfig, StoreLocked
    from gearstore.stores.sqlite import SqliteStore
    store = SqliteStore(StoreConfig(kind="sqlite", db=sys.argv[1]))
    try:
        store.open()
    except StoreLocked as exc:
        print("LOCKED", exc)
    else:
        print("OPENED", len(list(store.replay())))
        store.close()
    """
)


def open_in_child(path: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", OPEN_IN_CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    return result.stdout.strip()


def test_a_second_process_cannot_open_the_same_file(
    sqlite_store_factory: Factory, sqlite_path: Path
) -> None:
    store = sqlite_store_factory()
    store.open()
    store.apply([job(1)], [])
    out = open_in_child(sqlite_path)
    assert out.startswith("LOCKED")
    assert f"{sqlite_path} is already in use by another gearstore process" in out
    assert f"(pid {os.getpid()}?)" in out
    store.close()
    # once the first server has closed the store, the next one gets in
    assert open_in_child(sqlite_path) == "OPENED 1"


def test_a_second_instance_in_the_same_process_is_refused_too(
    sqlite_store_factory: Factory,
) -> None:
    first = sqlite_store_factory()
    first.open()
    with pytest.raises(StoreLocked):
        sqlite_store_factory().open()
    first.close()
    second = sqlite_store_factory()
    second.open()
    second.close()


def test_a_file_that_is_not_a_database(sqlite_store_factory: Factory, sqlite_path: Path) -> None:
    sqlite_path.write_bytes(b"this is a text file, not a queue\n" * 200)
    with pytest.raises(StoreCorrupt, match="is not a SQLite database or is damaged"):
        sqlite_store_factory().open()
    # the failed open released its lock: the next attempt reports the same problem
    with pytest.raises(StoreCorrupt):
        sqlite_store_factory().open()


def test_a_damaged_database(sqlite_store_factory: Factory, sqlite_path: Path) -> None:
    store = sqlite_store_factory()
    store.open()
    store.apply([job(i, os.urandom(2000)) for i in range(1, 2001)], [])
    store.close()
    with sqlite_path.open("r+b") as f:  # overwrite pages of the table's b-tree
        f.seek(4096 * 8)
        f.write(b"\xa5" * 4096 * 40)
    store = sqlite_store_factory()
    with pytest.raises(StoreCorrupt, match="restore it from a backup"):
        store.open()
        list(store.replay())
    store.close()


def test_missing_directory_and_bad_paths(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "queue.db"
    with pytest.raises(StoreError, match="does not exist"):
        SqliteStore(StoreConfig(kind="sqlite", db=str(missing))).open()
    for db in [None, ""]:
        with pytest.raises(StoreError, match="--db PATH"):
            SqliteStore(StoreConfig(kind="sqlite", db=db))
    with pytest.raises(StoreError, match="-q builtin"):
        SqliteStore(StoreConfig(kind="sqlite", db=":memory:"))


@pytest.mark.parametrize(("mode", "value"), [("EXTRA", 3), ("FULL", 2), ("normal", 1), ("OFF", 0)])
def test_journal_and_synchronous_settings(
    sqlite_store_factory: Factory, mode: str, value: int
) -> None:
    store = sqlite_store_factory(sqlite_synchronous=mode)
    store.open()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == value
    store.close()


def test_invalid_synchronous_setting(sqlite_store_factory: Factory) -> None:
    with pytest.raises(StoreError, match="choose one of EXTRA, FULL, NORMAL, OFF"):
        sqlite_store_factory(sqlite_synchronous="SOMETIMES")


def test_replay_pages_through_the_table(sqlite_store_factory: Factory) -> None:
    store = sqlite_store_factory()
    store.replay_page_size = 7
    store.replay_fetch_size = 3
    store.open()
    ids = [i * i for i in range(1, 60)]
    store.apply([job(i) for i in reversed(ids)], [])
    assert [j.id for j in store.replay()] == ids
    # exactly a multiple of the page size
    store.apply([], ids[49:])
    assert [j.id for j in store.replay()] == ids[:49]
    store.close()


def test_large_ids_and_epochs(sqlite_store_factory: Factory) -> None:
    store = sqlite_store_factory()
    store.open()
    jobs = [
        StoredJob(2**63 - 1, b"f", b"", Priority.LOW, 2**63 - 1, b""),
        StoredJob(2**53 + 1, b"f", b"", Priority.HIGH, 2**40, b"x"),
    ]
    store.apply(jobs, [])
    assert list(store.replay()) == sorted(jobs, key=lambda j: j.id)
    store.close()


def test_a_row_with_an_impossible_priority_is_reported(sqlite_store_factory: Factory) -> None:
    store = sqlite_store_factory()
    store.open()
    store.apply([job(1)], [])
    with store.engine.begin() as conn:
        conn.execute(sa.update(store.table).values(priority=7))
    with pytest.raises(StoreCorrupt, match=r"job 1 .* has priority 7"):
        list(store.replay())
    store.close()


def test_a_busy_database_is_unavailable_then_recovers(
    sqlite_store_factory: Factory, sqlite_path: Path
) -> None:
    store = sqlite_store_factory()
    store.busy_timeout_ms = 100
    store.open()
    store.apply([job(1)], [])
    # an operator's shell holding a write transaction on the file
    other = sqlite3.connect(sqlite_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable, match="database is locked"):
        store.apply([job(2)], [1])
    other.execute("ROLLBACK")
    other.close()
    # no reconnecting by the caller: the next apply simply works
    store.apply([job(3)], [1])
    assert [j.id for j in store.replay()] == [3]
    store.close()


def test_apply_and_replay_need_an_open_store(sqlite_store_factory: Factory) -> None:
    store = sqlite_store_factory()
    with pytest.raises(StoreError, match="not open"):
        store.apply([job(1)], [])
    store.open()
    store.close()
    with pytest.raises(StoreError, match="not open"):
        list(store.replay())
