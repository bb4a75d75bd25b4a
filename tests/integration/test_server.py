"""The server end to end over real sockets: admin protocol, hostile input, store writer."""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections.abc import Callable

import pytest

from gearstore.client import Client, Connection, GearmanError, Worker, admin, parse_status
from gearstore.protocol import encode_request
from gearstore.protocol.packets import PacketType as T
from gearstore.stores.memory import MemoryStore
from tests.fixtures.server import ServerThread


def raw_exchange(port: int, data: bytes, wait: float = 0.3) -> bytes:
    """Send bytes, collect whatever comes back within ``wait`` seconds (or until EOF)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)
        sock.settimeout(wait)
        out = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return out + b"<EOF>"
                out += chunk
        except TimeoutError:
            return out


def test_admin_status_workers_show_jobs(server: ServerThread) -> None:
    with Client(port=server.port) as client, Worker(port=server.port) as worker:
        client.submit_bg(b"fn1", b"a")
        client.submit_bg(b"fn1", b"b", unique=b"u1")
        worker.can_do(b"fn2", b"fn3")
        client.echo(b"sync")
        time.sleep(0.05)
        status = parse_status(admin("127.0.0.1", server.port, "status"))
        assert status["fn1"] == (2, 0, 0)
        assert status["fn2"] == (0, 0, 1)
        workers = admin("127.0.0.1", server.port, "workers")
        assert any(line.endswith(" - : fn2 fn3") for line in workers)
        jobs = admin("127.0.0.1", server.port, "show jobs")
        assert jobs == ["H:test:1\t0\t0\t1", "H:test:2\t0\t0\t1"]
        assert admin("127.0.0.1", server.port, "show unique jobs") == ["u1"]
        assert admin("127.0.0.1", server.port, "prioritystatus")[0] == "fn1\t0\t2\t0\t0"


def test_admin_single_line_replies(server: ServerThread) -> None:
    port = server.port
    assert raw_exchange(port, b"version\n").startswith(b"OK ")
    assert raw_exchange(port, b"getpid\n") == b"OK %d\n" % os.getpid()
    assert raw_exchange(port, b"maxqueue f 10\n") == b"OK\r\n"
    assert raw_exchange(port, b"maxqueue\n").startswith(b"ERR INVALID_ARGUMENTS")
    assert raw_exchange(port, b"bogus cmd\n") == (
        b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"
    )
    assert raw_exchange(port, b"create function longname\n") == b"OK\r\n"
    assert "longname\t0\t0\t0" in admin("127.0.0.1", port, "status")
    assert raw_exchange(port, b"drop function longname\n") == b"OK\r\n"
    assert raw_exchange(port, b"drop function longname\n") == b"ERR function not found\r\n"
    assert raw_exchange(port, b"cancel job H:x:1\n") == b"ERR UNKNOWN_JOB\r\n"


def test_cancel_job_removes_it_from_status(server: ServerThread) -> None:
    with Client(port=server.port) as client:
        handle = client.submit_bg(b"f", b"x")
        assert raw_exchange(server.port, b"cancel job " + handle + b"\n") == b"OK\r\n"
        assert parse_status(admin("127.0.0.1", server.port, "status"))["f"] == (0, 0, 0)
        assert client.get_status(handle) == (False, False, 0, 0)


def test_maxqueue_full_answers_queue_error(server: ServerThread) -> None:
    raw_exchange(server.port, b"maxqueue f 1\n")
    with Client(port=server.port) as client:
        client.submit_bg(b"f", b"1")
        with pytest.raises(GearmanError) as info:
            client.submit_bg(b"f", b"2")
        assert info.value.code == b"QUEUE_ERROR"


def test_many_packets_in_one_write_and_split_packets(server: ServerThread) -> None:
    with Client(port=server.port) as client:
        handles = client.submit_many_bg([(b"f", b"", b"%d" % i) for i in range(500)])
        assert len(set(handles)) == 500
        wire = encode_request(T.ECHO_REQ, b"split")
        for byte in wire:
            client.send_raw(bytes([byte]))
        assert client.read().args == (b"split",)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\0REX" + struct.pack(">II", 16, 1) + b"x", b"INVALID_MAGIC"),
        (b"\0REQ" + struct.pack(">II", 7, 100 * 1024 * 1024), b"ARGUMENT_TOO_LARGE"),
    ],
)
def test_unrecoverable_input_gets_error_then_close(
    server: ServerThread, data: bytes, code: bytes
) -> None:
    reply = raw_exchange(server.port, data, wait=2)
    assert reply.endswith(b"<EOF>")
    assert code in reply
    # the server is still fine
    with Client(port=server.port) as client:
        assert client.echo(b"alive") == b"alive"


@pytest.mark.parametrize(
    "data",
    [
        b"\0REQ" + struct.pack(">II", 99, 1) + b"x",  # unknown type
        encode_request(T.JOB_CREATED, b"x"),  # server-only packet
        encode_request(T.SUBMIT_JOB, b"f", b"u"),  # too few arguments
        encode_request(T.SUBMIT_JOB_EPOCH, b"f", b"u", b"soon", b"d"),  # bad epoch
        b"\0RES" + struct.pack(">II", 16, 1) + b"x",  # response magic from a client
    ],
)
def test_recoverable_bad_packets_get_error_and_connection_lives(
    server: ServerThread, data: bytes
) -> None:
    with Connection(port=server.port) as conn:
        conn.send_raw(data + encode_request(T.ECHO_REQ, b"after"))
        error = conn.read_any()
        assert error.type == T.ERROR
        assert conn.read().args == (b"after",)


def test_garbage_does_not_hurt_the_server(server: ServerThread) -> None:
    rng = random.Random(1234)
    for _ in range(50):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        raw_exchange(server.port, junk, wait=0.02)
    with Client(port=server.port) as client:
        assert client.echo(b"still here") == b"still here"


def test_foreground_job_with_status_and_exceptions(server: ServerThread) -> None:
    with Client(port=server.port) as client, Worker(port=server.port) as worker:
        client.option(b"exceptions")
        worker.can_do(b"f")
        client.send(T.SUBMIT_JOB, b"f", b"", b"x")
        handle = client.read().args[0]
        job = worker.grab()
        assert job is not None
        worker.work(T.WORK_STATUS, handle, b"1", b"2")
        worker.work(T.WORK_EXCEPTION, handle, b"boom")
        result = client.wait(handle)
        assert result.status == "exception" and result.data == b"boom"
        assert result.updates[0].args == (handle, b"1", b"2")


def test_epoch_job_wakes_sleeping_worker_when_due(server: ServerThread) -> None:
    with Client(port=server.port) as client, Worker(port=server.port) as worker:
        worker.can_do(b"later")
        handle = client.submit_epoch(b"later", b"x", int(time.time()) + 2)
        assert worker.grab() is None
        started = time.monotonic()
        worker.sleep_until_noop()
        waited = time.monotonic() - started
        assert 0.5 < waited < 4
        job = worker.grab()
        assert job is not None and job.args[0] == handle


def test_can_do_timeout_over_the_wire(server: ServerThread) -> None:
    with Client(port=server.port) as client, Worker(port=server.port) as slow:
        slow.can_do(b"f", timeout=1)
        handle = client.submit_bg(b"f", b"x")
        assert slow.grab() is not None
        time.sleep(1.5)
        with Worker(port=server.port) as fast:
            fast.can_do(b"f")
            job = fast.grab()
            assert job is not None and job.args[0] == handle


def test_shutdown_from_loopback_stops_the_server(server: ServerThread) -> None:
    assert raw_exchange(server.port, b"shutdown\n").startswith(b"OK\r\n")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
        except OSError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("server still accepts connections after shutdown")


# ---------------------------------------------------------------- store writer


def test_background_jobs_reach_the_store_and_leave_on_completion(
    server_factory: Callable[..., ServerThread],
) -> None:
    store = MemoryStore()
    srv = server_factory(store=store, queue_type="builtin")
    with Client(port=srv.port) as client, Worker(port=srv.port) as worker:
        handles = client.submit_many_bg([(b"f", b"", b"%d" % i) for i in range(200)])
        assert len(store.jobs) == 200
        assert store.batches < 200  # group commit: far fewer batches than jobs
        client.send(T.SUBMIT_JOB, b"f", b"", b"fg")
        client.read()
        assert len(store.jobs) == 200  # foreground jobs are never stored
        worker.can_do(b"f")
        done = worker.drain(limit=10)
        client.echo(b"x")
        worker.send(T.ECHO_REQ, b"sync")
        worker.read()
        time.sleep(0.1)
        assert len(store.jobs) == 190
        assert {p.args[0] for p in done} <= set(handles) | {b"H:test:201"}


def test_store_failure_gives_error_then_recovers(
    server_factory: Callable[..., ServerThread],
) -> None:
    store = MemoryStore()
    srv = server_factory(store=store, queue_type="builtin")
    with Client(port=srv.port) as client:
        store.fail_next("database is on fire", times=3)
        with pytest.raises(GearmanError) as info:
            client.submit_bg(b"f", b"x")
        assert info.value.code == b"QUEUE_ERROR"
        assert b"database is on fire" in info.value.message
        client.send(T.SUBMIT_JOB, b"f", b"", b"fg")  # foreground unaffected
        assert client.read().type == T.JOB_CREATED
        deadline = time.monotonic() + 5
        while True:
            try:
                client.submit_bg(b"f", b"y")
                break
            except GearmanError:
                assert time.monotonic() < deadline, "store never recovered"
                time.sleep(0.05)
        assert [j.data for j in store.jobs.values()] == [b"y"]
