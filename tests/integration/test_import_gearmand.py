"""``gearstore db import-gearmand``: jobs queued by the real C gearmand arrive intact.

Each test runs /usr/sbin/gearmand on a free port with one of its persistent queues
(libsqlite3, Postgres, MySQL; the database ones against the throwaway servers of
:mod:`tests.dbservers`), submits background jobs with the real ``gearman`` tool (and
one SUBMIT_JOB_EPOCH, which that tool cannot send), lets a worker finish one of them,
stops gearmand, imports its table into a gearstore SqliteStore and replays that store
from a fresh instance.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sqlite3
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from gearstore.importer import (
    GearmandImportError,
    import_gearmand,
    read_gearmand_queue,
    source_from_gearmand_options,
)
from gearstore.stores.base import Priority, StoreConfig, StoredJob
from gearstore.stores.memory import MemoryStore
from gearstore.stores.sqlite import SqliteStore
from tests.dbservers import DbServer, drop_tables, free_port, unique_table_name

GEARMAND = shutil.which("gearmand", path="/usr/sbin:/usr/local/sbin:/usr/bin") or ""
GEARMAN = shutil.which("gearman") or ""

SUBMIT_JOB_EPOCH, JOB_CREATED = 36, 8


@dataclass(frozen=True)
class Submitted:
    """A job we gave gearmand, as gearstore should hold it afterwards."""

    function: bytes
    unique: bytes | None  # None: the gearman tool makes up a UUID
    priority: Priority
    data: bytes
    when: int | None = None


@contextlib.contextmanager
def running_gearmand(queue_args: list[str], workdir: Path) -> Iterator[int]:
    """Run gearmand with ``queue_args`` on a free port; stop it cleanly on exit."""
    port = free_port()
    log = workdir / f"gearmand-{port}.log"
    pid_file = workdir / f"gearmand-{port}.pid"
    args = [GEARMAND, "-L", "127.0.0.1", "-p", str(port), "-t", "1", "-l", str(log),
            "--verbose", "INFO", "-P", str(pid_file), *queue_args]  # fmt: skip
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
                pytest.fail(f"gearmand {' '.join(queue_args)} exited: {tail}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, "gearmand did not listen within 20s"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def submit(port: int, job: Submitted) -> None:
    """Submit ``job`` in the background with the real gearman client."""
    if job.when is not None:
        submit_epoch(port, job)
        return
    args: list[str | bytes] = [
        GEARMAN,
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-b",
        "-f",
        job.function,
    ]
    if job.unique is not None:
        args += ["-u", job.unique]
    args += {Priority.HIGH: ["-I"], Priority.LOW: ["-L"], Priority.NORMAL: []}[job.priority]
    # The data goes through stdin: argv cannot carry NUL bytes.
    result = subprocess.run(args, input=job.data, capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


def submit_epoch(port: int, job: Submitted) -> None:
    """SUBMIT_JOB_EPOCH by hand: the gearman tool has no option for it."""
    assert job.unique is not None and job.when is not None
    body = b"\0".join([job.function, job.unique, str(job.when).encode(), job.data])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\0REQ" + struct.pack(">II", SUBMIT_JOB_EPOCH, len(body)) + body)
        reply = b""
        while len(reply) < 12:
            chunk = sock.recv(4096)
            assert chunk, "gearmand closed the connection"
            reply += chunk
    assert reply[:4] == b"\0RES" and struct.unpack(">I", reply[4:8])[0] == JOB_CREATED, reply


def work_one(port: int, function: bytes) -> None:
    """Let a real worker take and complete one job, so gearmand deletes its row."""
    result = subprocess.run(
        [GEARMAN, "-h", "127.0.0.1", "-p", str(port), "-w", "-c", "1", "-f", function, "--", "cat"],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def jobs_for(backend: str) -> list[Submitted]:
    """What to submit; order matters (jobs of one priority must keep it)."""
    later = int(time.time()) + 86_400
    # gearmand's PostgreSQL and MySQL tables hold unique keys as UTF-8 text; SQLite
    # keeps whatever bytes it gets, so there the key may be any byte string.
    odd_unique = b"caf\xe9 \xff-key" if backend == "sqlite" else "café -ключ".encode()
    return [
        Submitted(b"resize", b"img-1", Priority.NORMAL, b"first normal"),
        Submitted(b"resize", b"img 2 - spaces", Priority.HIGH, b"\x00\xff\x80 binary\r\n\x00"),
        Submitted(b"resize", odd_unique, Priority.LOW, "payload ☃".encode()),
        Submitted(b"mail", None, Priority.NORMAL, os.urandom(300_000)),
        Submitted(b"resize", b"img-3", Priority.NORMAL, b"second normal"),
        Submitted(b"report", b"nightly", Priority.NORMAL, b"at a time", when=later),
        Submitted(b"mail", b"m-2", Priority.HIGH, b""),
        Submitted(b"resize", b"img-4", Priority.LOW, b"second low"),
    ]


@dataclass
class GearmandQueue:
    """How to run gearmand on one backend and where its table ends up."""

    backend: str
    gearmand_args: list[str]
    source_url: str
    table: str


def _postgres_queue(server: DbServer, table: str) -> GearmandQueue:
    url = sa.make_url(server.url)
    conninfo = f"host={url.host} port={url.port} user={url.username} dbname={url.database}"
    if url.password:
        conninfo += f" password={url.password}"
    # gearmand's own flags -> import source, as `gearstore db import-gearmand` does it
    source, source_table = source_from_gearmand_options(
        "Postgres", {"libpq-conninfo": conninfo, "libpq-table": table}
    )
    return GearmandQueue(
        "postgres", ["-q", "Postgres", "--libpq-conninfo", conninfo, "--libpq-table", table],
        source, source_table,
    )  # fmt: skip


def _mysql_queue(server: DbServer, table: str) -> GearmandQueue:
    url = sa.make_url(server.url)
    flags = {"mysql-host": url.host or "127.0.0.1", "mysql-port": str(url.port or 3306),
             "mysql-user": url.username or "", "mysql-db": url.database or "",
             "mysql-table": table}  # fmt: skip
    if url.password:
        flags["mysql-password"] = url.password
    source, source_table = source_from_gearmand_options("MySQL", flags)
    args = ["-q", "MySQL"]
    for name, value in flags.items():
        args += [f"--{name}", value]
    return GearmandQueue("mysql", args, source, source_table)


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def gearmand_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GearmandQueue]:
    """gearmand's queue on each backend; database tables are dropped afterwards."""
    if request.param == "sqlite":
        path = tmp_path / "gearmand.sqlite"
        yield GearmandQueue(
            "sqlite", ["-q", "libsqlite3", "--libsqlite3-db", str(path)], str(path),
            "gearman_queue",
        )  # fmt: skip
        return
    server: DbServer = request.getfixturevalue(f"{request.param}_server")
    table = unique_table_name("gearmand")
    make = _postgres_queue if request.param == "postgres" else _mysql_queue
    yield make(server, table)
    drop_tables(server.url, table)


@pytest.fixture
def target_factory(tmp_path: Path) -> Callable[[], SqliteStore]:
    """New, unopened gearstore SqliteStores on one file."""
    return lambda: SqliteStore(StoreConfig(kind="sqlite", db=str(tmp_path / "gearstore.db")))


def _expected_order(jobs: list[Submitted]) -> list[Submitted]:
    """HIGH, NORMAL, LOW; submission order within a priority."""
    return sorted(jobs, key=lambda job: job.priority)  # sorted() is stable


def _matches(job: StoredJob, want: Submitted) -> bool:
    unique_ok = (
        len(job.unique) == 36 and job.unique.count(b"-") == 4  # the tool's UUID
        if want.unique is None
        else job.unique == want.unique
    )
    return unique_ok and (job.function, job.priority, job.when, job.data, job.reducer) == (
        want.function,
        want.priority,
        want.when,
        want.data,
        None,
    )


@pytest.mark.needs_tool("gearmand")
@pytest.mark.skipif(not GEARMAND, reason="gearmand not installed (apt install gearman-job-server)")
@pytest.mark.skipif(not GEARMAN, reason="gearman tool not installed (apt install gearman-tools)")
def test_gearmand_jobs_arrive_intact(
    gearmand_queue: GearmandQueue, target_factory: Callable[[], SqliteStore], tmp_path: Path
) -> None:
    """Every job gearmand still holds is imported with its function, unique key,
    priority, epoch time and data, in priority-then-submission order; a job a worker
    completed is not."""
    jobs = jobs_for(gearmand_queue.backend)
    with running_gearmand(gearmand_queue.gearmand_args, tmp_path) as port:
        submit(port, Submitted(b"cleanup", b"done-1", Priority.NORMAL, b"to be completed"))
        for job in jobs:
            submit(port, job)
        work_one(port, b"cleanup")

    store = target_factory()
    store.open()
    store.apply([StoredJob(7, b"existing", b"e", Priority.NORMAL, None, b"kept")], ())
    try:
        count = import_gearmand(gearmand_queue.source_url, gearmand_queue.table, store, 8)
    finally:
        store.close()
    assert count == len(jobs)

    fresh = target_factory()
    fresh.open()
    try:
        replayed = list(fresh.replay())
    finally:
        fresh.close()
    assert replayed[0].function == b"existing"
    imported = replayed[1:]
    assert [job.id for job in imported] == list(range(8, 8 + len(jobs)))
    for got, want in zip(imported, _expected_order(jobs), strict=True):
        assert _matches(got, want), (got, want)


# --- reading hand-made gearmand tables: no gearmand needed -----------------------------


def _gearmand_sqlite(path: Path, rows: list[tuple[object, ...]], *, when: bool = True) -> None:
    """A table shaped exactly as gearmand 1.1's libsqlite3 queue creates it."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        extra = ", when_to_run INTEGER" if when else ""
        conn.execute(
            "CREATE TABLE gearman_queue ( unique_key TEXT, function_name TEXT, priority "
            f"INTEGER, data BLOB{extra}, PRIMARY KEY (unique_key, function_name))"
        )
        marks = ", ".join("?" * len(rows[0]))
        conn.executemany(f"INSERT INTO gearman_queue VALUES ({marks})", rows)
        conn.commit()


def test_old_table_without_when_to_run_and_zero_when(tmp_path: Path) -> None:
    """Tables from gearmand before 0.21 have no when_to_run; 0 means "now" (None)."""
    old = tmp_path / "old.sqlite"
    _gearmand_sqlite(old, [("u", "f", 1, b"d")], when=False)
    assert [tuple(job) for job in read_gearmand_queue(str(old))] == [
        (b"f", b"u", Priority.NORMAL, None, b"d")
    ]
    new = tmp_path / "new.sqlite"
    _gearmand_sqlite(new, [("a", "f", 2, b"x", 0), ("b", "f", 0, b"y", 1_900_000_000)])
    assert [(job.unique, job.priority, job.when) for job in read_gearmand_queue(str(new))] == [
        (b"b", Priority.HIGH, 1_900_000_000),
        (b"a", Priority.LOW, None),
    ]


def test_missing_table_and_unknown_priority_are_clear_errors(tmp_path: Path) -> None:
    """A wrong table name or a priority gearmand never writes stops before importing."""
    path = tmp_path / "q.sqlite"
    _gearmand_sqlite(path, [("u", "f", 1, b"d", 0), ("v", "f", 7, b"e", 0)])
    with pytest.raises(GearmandImportError, match=r"no table 'queue'.*--libsqlite3-table"):
        list(read_gearmand_queue(str(path), "queue"))
    store = MemoryStore()
    with pytest.raises(GearmandImportError, match=r"1 row.*priority gearmand never writes"):
        import_gearmand(str(path), None, store, 1)
    assert store.jobs == {}
    with pytest.raises(GearmandImportError, match="does-not-exist"):
        list(read_gearmand_queue(str(tmp_path / "does-not-exist.sqlite")))
    assert not (tmp_path / "does-not-exist.sqlite").exists()


def test_batches_are_bounded_and_ids_contiguous(tmp_path: Path) -> None:
    """Large queues go to the store in several atomic batches with consecutive ids."""
    path = tmp_path / "q.sqlite"
    _gearmand_sqlite(path, [(f"u{i}", "f", i % 3, bytes([i]) * 10, 0) for i in range(10)])
    store = MemoryStore()
    assert import_gearmand(str(path), None, store, 100, batch_jobs=3) == 10
    assert store.batches == 4
    assert sorted(store.jobs) == list(range(100, 110))
    assert [store.jobs[i].priority for i in range(100, 110)] == [Priority.HIGH] * 4 + [
        Priority.NORMAL
    ] * 3 + [Priority.LOW] * 3


class FailsOnSecondBatch(MemoryStore):
    """The reference in-memory store, failing its second write as a full disk would."""

    def apply(self, add: Sequence[StoredJob], remove: Sequence[int]) -> None:
        """Fail the second batch; apply the others."""
        if self.batches == 1:
            self.fail_next("disk full")
        super().apply(add, remove)


def test_store_failure_says_what_was_imported(tmp_path: Path) -> None:
    """A store that fails mid-import leaves whole batches and an error naming them."""
    path = tmp_path / "q.sqlite"
    _gearmand_sqlite(path, [(f"u{i}", "f", 1, b"d", 0) for i in range(5)])
    store = FailsOnSecondBatch()
    with pytest.raises(GearmandImportError, match=r"disk full; jobs 1\.\.2 were imported"):
        import_gearmand(str(path), None, store, 1, batch_jobs=2)
    assert sorted(store.jobs) == [1, 2]


def test_gearmand_flags_become_source_urls() -> None:
    """The queue flags an operator gave gearmand name the same source for the import."""
    assert source_from_gearmand_options("libsqlite3", {"libsqlite3-db": "/var/q.db"}) == (
        "/var/q.db",
        "gearman_queue",
    )
    url, table = source_from_gearmand_options(
        "Postgres", {"libpq-conninfo": "host=/run/postgresql dbname=jobs user=gm"}
    )
    assert (sa.make_url(url).database, sa.make_url(url).query["host"], table) == (
        "jobs",
        "/run/postgresql",
        "queue",
    )
    url, table = source_from_gearmand_options(
        "MySQL", {"mysql-user": "gm", "mysql-password": "p@ss", "mysql-db": "jobs"}
    )
    assert (sa.make_url(url).password, sa.make_url(url).port, table) == (
        "p@ss",
        3306,
        "gearman_queue",
    )
    with pytest.raises(GearmandImportError, match="drain the queue"):
        source_from_gearmand_options("libmemcached", {})
