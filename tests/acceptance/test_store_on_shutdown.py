"""``--store-queue-on-shutdown``: the store is written only at a clean stop.

The documented trade-off (docs/durability.md): submits are acknowledged without any
store write, so a clean SIGTERM restart keeps the queue, while kill -9 loses every
change since the last clean start: jobs submitted since are gone, and jobs completed
since come back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from gearstore.client import Client, Worker
from gearstore.protocol.packets import PacketType as T
from tests.acceptance.gearstore_process import GearstoreProcess
from tests.acceptance.ledger import PRIORITIES, Ledger
from tests.acceptance.replay import priority_status
from tests.acceptance.traffic import HOST, IO_TIMEOUT, drain, statuses, submit_pipelined
from tests.fixtures.server import free_port


def _complete(port: int, function: bytes, count: int) -> list[bytes]:
    """Complete ``count`` jobs of ``function``; returns their data."""
    done = []
    with Worker(HOST, port, timeout=IO_TIMEOUT) as worker:
        worker.can_do(function)
        for _ in range(count):
            packet = worker.grab()
            assert packet is not None
            worker.complete(packet.args[0])
            done.append(packet.args[2])
        worker.send(T.ECHO_REQ, b"x")
        assert worker.read().type == T.ECHO_RES
    return done


def test_queue_survives_sigterm_but_kill_9_loses_changes_since_start(
    tmp_path: Path, gearstore: Callable[..., GearstoreProcess]
) -> None:
    args = ["-q", "sqlite", "--db", str(tmp_path / "queue.db"), "--store-queue-on-shutdown"]
    port = free_port()
    server = gearstore(*args, port=port)
    assert "written at clean shutdown only" in server.full_log()
    ledger = Ledger("a")
    with Client(HOST, port, timeout=IO_TIMEOUT) as client:
        first = [ledger.new(b"q", PRIORITIES[i % 3], unique=i % 4 == 0) for i in range(30)]
        submit_pipelined(client, first)
    assert all(job.acked for job in first)
    completed_first = set(_complete(port, b"q", 6))
    assert server.terminate() == 0
    assert re.search(r"stored 24 queued background job\(s\) at shutdown", server.full_log())

    # clean restart: the 24 jobs left are back with their handles and priorities
    server = gearstore(*args, port=port)
    kept = [job for job in first if job.data not in completed_first]
    status = statuses(port, [job.handle for job in first if job.handle])
    for job in first:
        assert status[job.handle or b""] == ((True, False) if job in kept else (False, False))
    expected_depth = tuple(sum(job.priority == p for job in kept) for p in PRIORITIES)
    assert priority_status(port) == {b"q": expected_depth}

    # changes after that start: completions of replayed jobs, and new jobs
    completed_again = _complete(port, b"q", 3)
    assert set(completed_again) <= {job.data for job in kept}
    later = Ledger("b")
    with Client(HOST, port, timeout=IO_TIMEOUT) as client:
        second = [later.new(b"q", PRIORITIES[i % 3]) for i in range(10)]
        submit_pipelined(client, second)
    assert all(job.acked for job in second)
    server.kill()

    # kill -9: the store still holds what the last clean stop wrote, nothing since
    server = gearstore(*args, port=port)
    assert "replayed 24 job(s)" in server.full_log()
    status = statuses(port, [job.handle for job in second if job.handle])
    assert not any(known for known, _ in status.values()), "jobs acked since the start survived"
    back = drain(port, [b"q"])
    assert sorted(a.data for a in back) == sorted(job.data for job in kept)
    assert server.terminate() == 0
