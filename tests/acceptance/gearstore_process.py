"""The ``gearstore`` command as a child process, for kill -9 and restart tests.

A thin layer over :class:`tests.fixtures.server.ServerProcess` that closes its copy of
the log file after handing it to the child (the base class leaves it open, which
``filterwarnings = error`` turns into a ResourceWarning failure) and reads the whole
log, not just its tail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.server import ServerProcess


class GearstoreProcess(ServerProcess):
    """One ``python -m gearstore`` child with its log in a file."""

    log: Path

    def start(self, wait: bool = True, timeout: float = 60) -> GearstoreProcess:
        """Start the process; with ``wait``, block until the port accepts connections."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gearstore", *self.args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def full_log(self) -> str:
        """Everything the server logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_exit(self, timeout: float = 60) -> int:
        """Wait for the process to exit on its own; its exit status."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def wait_for_log(self, text: str, timeout: float = 10) -> str:
        """Block until ``text`` appears in the log; the log at that point."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.full_log()
            if text in log:
                return log
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout} s; log:\n{log[-3000:]}")
            time.sleep(0.05)
