"""Locate and run the external Gearman programs that the interoperability tests drive.

* :func:`tool` finds a program or skips the test with the package to install.
* :class:`Spawner` starts long-running programs (``gearman -w`` workers, clients that
  wait) in their own process group and kills every group it started at teardown, so a
  failing test never leaves a worker behind.
* :class:`Gearmand` runs the reference C gearmand on a free loopback port.
* :func:`exchange` sends raw bytes and reads the complete reply, using an ECHO_REQ
  sentinel so no test waits on an idle timeout to decide that a reply is over.

Packets are built and split here with :mod:`struct`, independently of gearstore's codec,
so that a codec bug cannot cancel itself out in a comparison.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from tests.fixtures.server import free_port

_HEADER = struct.Struct(">4sII")
REQ = b"\0REQ"
RES = b"\0RES"
ECHO_REQ = 16
ECHO_RES = 17
_SENTINEL = b"end-of-exchange-7f3a"
_SENTINEL_REPLY = RES + struct.pack(">II", ECHO_RES, len(_SENTINEL)) + _SENTINEL


def tool(name: str, package: str) -> str:
    """The path of program ``name``, or skip the test naming the Debian package."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if path is None:
        pytest.skip(f"{name} not installed: apt-get install {package}")
    return path


def run(
    args: Sequence[str], *, stdin: bytes | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    """Run a program to completion; a hang becomes a TimeoutExpired, never a stuck test."""
    return subprocess.run(
        list(args), input=stdin, capture_output=True, timeout=timeout, check=False
    )


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Spawned:
    """A program running in its own process group, with its output in a file."""

    def __init__(self, args: Sequence[str], out: Path, stdin: bytes | None) -> None:
        self.args = list(args)
        self.out_path = out
        self._out: IO[bytes] = open(out, "wb")  # noqa: SIM115 - closed in kill()/wait()
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: kill() also reaches `sh -c` children
        )
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin)
            self.proc.stdin.close()

    @property
    def output(self) -> bytes:
        """Everything the program wrote to stdout and stderr so far."""
        return self.out_path.read_bytes()

    def wait(self, timeout: float = 30) -> int:
        """Wait for the exit status; fail (with the output) instead of hanging."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"{self.args} did not exit within {timeout} s: {self.output!r}")
        self._out.close()
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group this program leads, and reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it may have just exited
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._out.close()


class Spawner:
    """Starts programs for one test and kills them all when the test ends."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Spawned] = []

    def __call__(self, *args: str, stdin: bytes | None = None) -> Spawned:
        """Start ``args`` in the background."""
        out = self.workdir / f"spawned-{len(self.started)}.out"
        spawned = Spawned(args, out, stdin)
        self.started.append(spawned)
        return spawned

    def close(self) -> None:
        """Kill everything still running."""
        for spawned in self.started:
            spawned.kill()


def start_gearstore(spawn: Spawner, *args: str) -> tuple[Spawned, int]:
    """The real ``gearstore`` command on a free port; returns it and its port."""
    port = free_port()
    proc = spawn(
        sys.executable, "-m", "gearstore", "-p", str(port), "--job-handle-prefix", "test", *args
    )

    def accepting() -> bool:
        if proc.proc.poll() is not None:
            pytest.fail(f"gearstore exited: {proc.output.decode(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_for(accepting, "gearstore to accept connections", timeout=60)
    return proc, port


class Gearmand:
    """The reference C gearmand on a free loopback port (foreground, killed at stop)."""

    def __init__(
        self, workdir: Path, handle_prefix: str = "H:test", extra: Sequence[str] = ()
    ) -> None:
        self.binary = tool("gearmand", "gearman-job-server")
        self.workdir = workdir
        # gearmand uses the prefix verbatim ("H:test:1"); gearstore adds "H:" itself, so
        # job_handle_prefix="test" there gives byte-identical handles.
        self.handle_prefix = handle_prefix
        self.extra = list(extra)
        self.log = workdir / "gearmand.log"
        self.pid_file = workdir / "gearmand.pid"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Gearmand:
        """Start on a free port (retrying if another test took it first)."""
        for _ in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--port", str(self.port),
                    "--listen", "127.0.0.1",
                    "--log-file", str(self.log),
                    "--pid-file", str(self.pid_file),
                    "--job-handle-prefix", self.handle_prefix,
                    # one I/O thread: one connection list, so `workers` has a stable order
                    "--threads", "1",
                    "--config-file", os.devnull,
                    *self.extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            if self._wait_ready(15):
                return self
            self.stop()
        raise RuntimeError(f"gearmand did not start: {self.log_text()}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def log_text(self) -> str:
        """The end of gearmand's log."""
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit promptly."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# ------------------------------------------------------------------ raw protocol


def req(ptype: int, *args: bytes, magic: bytes = REQ) -> bytes:
    """One binary packet, built by hand."""
    payload = b"\0".join(args)
    return _HEADER.pack(magic, ptype, len(payload)) + payload


def split_packets(data: bytes) -> list[tuple[bytes, int, bytes]]:
    """Split a reply made only of binary packets into (magic, type, payload)."""
    out = []
    pos = 0
    while pos < len(data):
        magic, ptype, size = _HEADER.unpack_from(data, pos)
        out.append((magic, ptype, data[pos + 12 : pos + 12 + size]))
        pos += 12 + size
    return out


class Conn:
    """A raw socket that sends bytes and reads back the complete reply."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.closed = False

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def exchange(self, data: bytes) -> bytes:
        """Send ``data`` then an ECHO_REQ sentinel; return everything received before the
        sentinel's echo. If the server closes instead, return what came and set
        ``closed``."""
        self.sock.sendall(data + req(ECHO_REQ, _SENTINEL))
        buf = b""
        deadline = time.monotonic() + self.timeout
        while not buf.endswith(_SENTINEL_REPLY):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete reply to {data!r}; got {buf!r}")
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
                return buf
            buf += chunk
        return buf[: -len(_SENTINEL_REPLY)]

    def read_packet(self) -> tuple[bytes, int, bytes]:
        """Block for exactly one binary packet (e.g. a JOB_CREATED that comes later)."""
        header = self._read_exactly(12)
        magic, ptype, size = _HEADER.unpack(header)
        return magic, ptype, self._read_exactly(size)

    def _read_exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"closed after {buf!r}")
            buf += chunk
        return buf


def exchange(port: int, data: bytes) -> tuple[bytes, bool]:
    """On a fresh connection: (reply bytes, whether the server closed the connection)."""
    with Conn(port) as conn:
        reply = conn.exchange(data)
        return reply, conn.closed
