"""End-to-end over real sockets: the in-process server with the bundled client."""

from __future__ import annotations

from gearstore.client import Client, Worker, admin, parse_status
from tests.fixtures.server import ServerThread


def test_background_job_round_trip(server: ServerThread) -> None:
    with Client(port=server.port) as client, Worker(port=server.port) as worker:
        handle = client.submit_bg(b"reverse", b"hello")
        assert handle.startswith(b"H:test:")
        assert parse_status(admin("127.0.0.1", server.port, "status"))["reverse"] == (1, 0, 0)
        worker.can_do(b"reverse")
        job = worker.grab()
        assert job is not None and job.args == (handle, b"reverse", b"hello")
        worker.complete(handle, b"olleh")
        assert client.echo(b"ping") == b"ping"
        assert worker.grab() is None
        assert parse_status(admin("127.0.0.1", server.port, "status"))["reverse"] == (0, 0, 1)
