"""Damaged and contended stores: a torn or garbage-tailed journal after kill -9, a file
that is not a SQLite database, and a second server on a store that is in use."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from gearstore.client import Client
from tests.acceptance.conftest import Backend
from tests.acceptance.gearstore_process import GearstoreProcess
from tests.acceptance.ledger import Ledger
from tests.acceptance.traffic import HOST, IO_TIMEOUT, drain, submit, submit_pipelined


def _active_journal(directory: Path) -> Path:
    journals = sorted(directory.glob("journal.*"))
    assert journals, f"no journal file in {directory}: {os.listdir(directory)}"
    return journals[-1]


def _fill_journal(port: int, directory: Path, ledger: Ledger) -> tuple[int, int]:
    """Submit jobs in several batches, then one last job in a batch of its own.

    Returns the active journal's size before and after that last batch: everything
    from the first size on is the last batch's frame (appends are durable, and so
    finished, before JOB_CREATED).
    """
    with Client(HOST, port, timeout=IO_TIMEOUT) as client:
        for n in range(3):
            jobs = [
                ledger.new(b"q", ("high", "normal", "low")[i % 3], unique=i % 2 == 0)
                for i in range(20 + n)
            ]
            submit_pipelined(client, jobs)
        for _ in range(10):
            submit(client, ledger.new(b"q", "low", pad=500))
        assert all(job.acked for job in ledger)
        before = _active_journal(directory).stat().st_size
        last = submit(client, ledger.new(b"q", "high", pad=300))
        assert last.acked
        after = _active_journal(directory).stat().st_size
    assert after > before
    return before, after


@pytest.mark.parametrize("damage", ["torn", "garbage"])
def test_journal_with_damaged_tail_restarts_with_intact_batches(
    damage: str, tmp_path: Path, gearstore: Callable[..., GearstoreProcess]
) -> None:
    directory = tmp_path / "journal"
    args = ["-q", "file", "--db", str(directory)]
    server = gearstore(*args)
    ledger = Ledger(damage)
    before, after = _fill_journal(server.port, directory, ledger)
    server.kill()

    journal = _active_journal(directory)
    last = max(ledger, key=lambda job: job.job_id)
    if damage == "torn":
        # the last frame loses its final bytes, as a write cut short by a crash would
        os.truncate(journal, after - 3)
        dropped, lost = after - 3 - before, {last.data}
    else:
        with open(journal, "ab") as fh:
            fh.write(os.urandom(100))
        dropped, lost = 100, set()

    server = gearstore(*args)
    log = server.full_log()
    match = re.search(r"WARNING .*dropped (\d+) bytes", log)
    assert match is not None, log
    assert int(match.group(1)) == dropped, match.group(0)
    assert "Traceback" not in log

    drained = drain(server.port, [b"q"])
    got = [a.data for a in drained]
    assert sorted(got) == sorted(job.data for job in ledger if job.data not in lost)
    for a in drained:
        job = ledger.get(a.data)
        assert job is not None and a.handle == job.handle and a.unique == job.unique
    assert server.terminate() == 0


def test_garbage_sqlite_file_is_a_clear_error(
    tmp_path: Path, gearstore: Callable[..., GearstoreProcess]
) -> None:
    db = tmp_path / "queue.db"
    db.write_bytes(b"this is not a SQLite database\n" * 300)
    server = gearstore("-q", "sqlite", "--db", str(db), start=False).start(wait=False)
    status = server.wait_exit(60)
    log = server.full_log()
    assert status != 0, log
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if " ERROR " in line or "CRITICAL" in line]
    assert len(errors) == 1, log
    assert "cannot start" in errors[0] and str(db) in errors[0], errors
    assert re.search(r"not a (SQLite )?database|damaged", errors[0], re.I), errors
    assert db.read_bytes() == b"this is not a SQLite database\n" * 300, "the file was changed"


@pytest.mark.parametrize("backend", ["sqlite", "file"], indirect=True)
def test_second_server_on_the_same_store_refuses_to_start(
    backend: Backend, gearstore: Callable[..., GearstoreProcess]
) -> None:
    first = gearstore(*backend.args)
    with Client(HOST, first.port, timeout=IO_TIMEOUT) as client:
        handle = client.submit_bg(b"q", b"kept")

    second = gearstore(*backend.args, start=False).start(wait=False)
    status = second.wait_exit(60)
    log = second.full_log()
    assert status != 0, log
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "in use" in errors[0], log
    assert str(backend.path) in errors[0], errors

    # the first server is unharmed and still owns its store
    with Client(HOST, first.port, timeout=IO_TIMEOUT) as client:
        assert client.get_status(handle)[0]
        assert client.submit_bg(b"q", b"more").startswith(b"H:")
    assert first.terminate() == 0
    third = gearstore(*backend.args)  # the lock went with the first server
    assert [a.data for a in drain(third.port, [b"q"])] == [b"kept", b"more"]
    assert third.terminate() == 0
