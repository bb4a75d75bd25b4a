"""A small blocking Gearman client and worker, used by the tests and the benchmarks.

It speaks the binary protocol through the same codec as the server, supports
pipelining (send many requests, then read the replies), and the text admin protocol.
It is deliberately small; it is not a full client library.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Self

from gearstore.protocol.codec import Decoder, encode_request
from gearstore.protocol.packets import RES, AdminLine, Packet, ProtocolViolation
from gearstore.protocol.packets import PacketType as T

SUBMIT_TYPES = {
    ("normal", False): T.SUBMIT_JOB,
    ("high", False): T.SUBMIT_JOB_HIGH,
    ("low", False): T.SUBMIT_JOB_LOW,
    ("normal", True): T.SUBMIT_JOB_BG,
    ("high", True): T.SUBMIT_JOB_HIGH_BG,
    ("low", True): T.SUBMIT_JOB_LOW_BG,
}


class GearmanError(Exception):
    """The server answered with ERROR (``code``) or closed the connection."""

    def __init__(self, code: bytes, message: bytes) -> None:
        super().__init__(f"{code.decode(errors='replace')}: {message.decode(errors='replace')}")
        self.code = code
        self.message = message


@dataclass
class JobResult:
    """Everything a foreground client received for one job."""

    handle: bytes
    status: str = "pending"  # complete, fail, exception
    data: bytes = b""
    updates: list[Packet] = field(default_factory=list)


class Connection:
    """One TCP connection to a Gearman server."""

    def __init__(self, host: str = "127.0.0.1", port: int = 4730, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = Decoder(expect=RES, max_packet=1 << 31)
        self._pending: list[Packet | AdminLine] = []

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, ptype: int, *args: bytes) -> None:
        """Send one request packet."""
        self.sock.sendall(encode_request(ptype, *args))

    def send_raw(self, data: bytes) -> None:
        """Send raw bytes (for hostile-input tests and pipelining)."""
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise GearmanError(b"LOST_CONNECTION", b"server closed the connection")
        for event in self.decoder.feed(data):
            if isinstance(event, ProtocolViolation):
                raise GearmanError(event.code, event.message)
            self._pending.append(event)

    def read(self) -> Packet:
        """The next packet from the server (raises on ERROR)."""
        packet = self.read_any()
        if packet.type == T.ERROR:
            raise GearmanError(packet.args[0], packet.args[1])
        return packet

    def read_any(self) -> Packet:
        """The next packet, ERROR included."""
        while True:
            while not self._pending:
                self._fill()
            event = self._pending.pop(0)
            if isinstance(event, Packet):
                return event

    def admin(self, command: str) -> list[str]:
        """Send a text admin command; returns the reply lines (without the final ``.``)."""
        self.sock.sendall(command.encode() + b"\n")
        buf = b""
        while True:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
            if (
                buf.endswith(b"\n.\n")
                or buf == b".\n"
                or (
                    buf.endswith(b"\n")
                    and not buf.startswith(b"\0")
                    and _is_single_line(command, buf)
                )
            ):
                break
        text = buf.decode(errors="replace")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if lines and lines[-1] == ".":
            lines.pop()
        return [line.rstrip("\r") for line in lines]


_LIST_COMMANDS = ("status", "prioritystatus", "workers", "show")


def _is_single_line(command: str, buf: bytes) -> bool:
    word = command.split()[0].lower() if command.split() else ""
    return word not in _LIST_COMMANDS or buf.startswith(b"ERR")


class Client(Connection):
    """Submits jobs and waits for their results."""

    def submit_bg(
        self, function: bytes, data: bytes, unique: bytes = b"", priority: str = "normal"
    ) -> bytes:
        """Submit a background job; returns its handle once the server acknowledged it."""
        self.send(SUBMIT_TYPES[(priority, True)], function, unique, data)
        return self._created()

    def submit_epoch(self, function: bytes, data: bytes, when: int, unique: bytes = b"") -> bytes:
        """Submit a job to run no earlier than ``when`` (epoch seconds)."""
        self.send(T.SUBMIT_JOB_EPOCH, function, unique, str(when).encode(), data)
        return self._created()

    def submit_many_bg(
        self, jobs: Sequence[tuple[bytes, bytes, bytes]], priority: str = "normal"
    ) -> list[bytes]:
        """Pipeline (function, unique, data) background submits; returns the handles."""
        ptype = SUBMIT_TYPES[(priority, True)]
        self.send_raw(b"".join(encode_request(ptype, f, u, d) for f, u, d in jobs))
        return [self._created() for _ in jobs]

    def submit(
        self, function: bytes, data: bytes, unique: bytes = b"", priority: str = "normal"
    ) -> JobResult:
        """Submit a foreground job and wait for its final packet."""
        self.send(SUBMIT_TYPES[(priority, False)], function, unique, data)
        return self.wait(self._created())

    def _created(self) -> bytes:
        packet = self.read()
        if packet.type != T.JOB_CREATED:
            raise GearmanError(b"UNEXPECTED", f"expected JOB_CREATED, got {packet.type}".encode())
        return packet.args[0]

    def wait(self, handle: bytes) -> JobResult:
        """Read packets until ``handle`` completes, fails or raises an exception."""
        result = JobResult(handle)
        while True:
            packet = self.read()
            if packet.args[:1] != (handle,):
                continue
            if packet.type == T.WORK_COMPLETE:
                result.status, result.data = "complete", packet.args[1]
                return result
            if packet.type == T.WORK_FAIL:
                result.status = "fail"
                return result
            if packet.type == T.WORK_EXCEPTION:
                result.status, result.data = "exception", packet.args[1]
                return result
            result.updates.append(packet)

    def get_status(self, handle: bytes) -> tuple[bool, bool, int, int]:
        """GET_STATUS: (known, running, numerator, denominator)."""
        self.send(T.GET_STATUS, handle)
        args = self.read().args
        return args[1] == b"1", args[2] == b"1", int(args[3] or 0), int(args[4] or 0)

    def echo(self, data: bytes) -> bytes:
        """ECHO_REQ round trip."""
        self.send(T.ECHO_REQ, data)
        return self.read().args[0]

    def option(self, name: bytes) -> None:
        """OPTION_REQ (e.g. b"exceptions")."""
        self.send(T.OPTION_REQ, name)
        self.read()


class Worker(Connection):
    """Registers functions and runs jobs."""

    def can_do(self, *functions: bytes, timeout: int = 0) -> None:
        """Announce the functions this worker runs."""
        for function in functions:
            if timeout:
                self.send(T.CAN_DO_TIMEOUT, function, str(timeout).encode())
            else:
                self.send(T.CAN_DO, function)

    def grab(self, mode: int = T.GRAB_JOB) -> Packet | None:
        """One GRAB; the JOB_ASSIGN* packet, or None for NO_JOB."""
        self.send(mode)
        while True:
            packet = self.read()
            if packet.type == T.NO_JOB:
                return None
            if packet.type in (T.JOB_ASSIGN, T.JOB_ASSIGN_UNIQ, T.JOB_ASSIGN_ALL):
                return packet
            # NOOPs may arrive after PRE_SLEEP; ignore and keep waiting for the answer

    def sleep_until_noop(self) -> None:
        """PRE_SLEEP and block until the server sends NOOP."""
        self.send(T.PRE_SLEEP)
        while self.read().type != T.NOOP:
            pass

    def complete(self, handle: bytes, data: bytes = b"") -> None:
        """WORK_COMPLETE."""
        self.send(T.WORK_COMPLETE, handle, data)

    def fail(self, handle: bytes) -> None:
        """WORK_FAIL."""
        self.send(T.WORK_FAIL, handle)

    def work(self, ptype: int, handle: bytes, *args: bytes) -> None:
        """Any WORK_* packet."""
        self.send(ptype, handle, *args)

    def drain(self, limit: int | None = None) -> list[Packet]:
        """Grab and complete jobs until NO_JOB (or ``limit`` jobs); returns the assignments."""
        done: list[Packet] = []
        while limit is None or len(done) < limit:
            packet = self.grab()
            if packet is None:
                break
            self.complete(packet.args[0], b"")
            done.append(packet)
        return done


def admin(host: str, port: int, command: str) -> list[str]:
    """One admin command on a fresh connection."""
    with Connection(host, port) as conn:
        return conn.admin(command)


def parse_status(lines: Iterable[str]) -> dict[str, tuple[int, int, int]]:
    """Parse ``status`` reply lines into function -> (total, running, workers)."""
    out: dict[str, tuple[int, int, int]] = {}
    for line in lines:
        name, total, running, workers = line.split("\t")
        out[name] = (int(total), int(running), int(workers))
    return out
