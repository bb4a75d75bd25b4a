"""gearmand's text admin protocol, byte-compatible with gearmand 1.1.x.

The formats below were taken from a live gearmand 1.1.20 (list replies end in ``.\\n``;
one-word acknowledgements end in ``\\r\\n``), so ``gearadmin`` and the Python admin
clients parse the replies unchanged. Deliberate differences from gearmand: ``cancel job``
really removes the job, ``create function`` keeps the whole name, ``maxqueue`` limits are
enforced, and ``shutdown`` is accepted from loopback connections only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from gearstore import __version__
from gearstore.engine.model import JobState

if TYPE_CHECKING:
    from gearstore.engine.core import Engine
    from gearstore.server.connection import Connection

OK = b"OK\r\n"


def _unknown(word: bytes) -> bytes:
    # gearmand glues the command word to its message; clients match on the prefix
    return b"ERR UNKNOWN_COMMAND Unknown+server+command" + word + b"\r\n"


def _incomplete(word: bytes) -> bytes:
    return (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"
        + word
        + b"\r\n"
    )


class Admin:
    """Answers admin lines for one server."""

    def __init__(
        self,
        engine: Engine,
        shutdown: Callable[[bool], None],
        verbose_name: Callable[[], str],
    ) -> None:
        self.engine = engine
        self.shutdown = shutdown
        self.verbose_name = verbose_name

    def handle(self, conn: Connection, line: bytes) -> None:
        """Answer one admin line on ``conn``."""
        words = line.split()
        command = words[0].lower() if words else b""
        args = words[1:]
        reply = self.reply(conn, command, args)
        conn.write_raw(reply)

    def reply(self, conn: Connection, command: bytes, args: list[bytes]) -> bytes:
        """The bytes to send back for one admin command."""
        engine = self.engine
        if command == b"status":
            return self._status()
        if command == b"prioritystatus":
            return self._priority_status()
        if command == b"workers":
            return self._workers()
        if command == b"show":
            if args[:1] == [b"jobs"]:
                return self._show_jobs()
            if args[:2] == [b"unique", b"jobs"]:
                return self._show_unique()
            return b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n" if args else _unknown(command)
        if command == b"cancel":
            if len(args) != 2 or args[0] != b"job":
                return _unknown(command)
            return OK if engine.cancel(args[1]) else b"ERR UNKNOWN_JOB\r\n"
        if command == b"create":
            if args == [b"function"]:
                return _incomplete(command)
            if len(args) != 2 or args[0] != b"function":
                return _unknown(command)
            engine.function(args[1])
            return OK
        if command == b"drop":
            if args == [b"function"]:
                return _incomplete(command)
            if len(args) != 2 or args[0] != b"function":
                return _unknown(command)
            if args[1] not in engine.functions:
                return b"ERR function not found\r\n"
            if engine.functions[args[1]].workers:
                return b"ERR there are still connected workers or executing clients\r\n"
            if engine.drop_function(args[1]):
                return OK
            return b"ERR function+has+jobs+or+workers\r\n"
        if command == b"maxqueue":
            return self._maxqueue(args)
        if command == b"getpid":
            return b"OK %d\n" % os.getpid()
        if command == b"version":
            return b"OK " + __version__.encode() + b"\n"
        if command == b"verbose":
            return b"OK " + self.verbose_name().encode() + b"\n"
        if command == b"shutdown":
            if args and args != [b"graceful"]:
                return _unknown(command)
            if not conn.loopback:
                return b"ERR PERMISSION_DENIED shutdown+is+only+accepted+from+loopback\r\n"
            self.shutdown(bool(args))
            return OK
        return _unknown(command)

    def _maxqueue(self, args: list[bytes]) -> bytes:
        if not args:
            return _incomplete(b"maxqueue")
        try:
            numbers = [int(a) for a in args[1:]]
        except ValueError:
            return b"ERR INVALID_ARGUMENTS maxqueue+sizes+must+be+whole+numbers\r\n"
        if not numbers:
            limits = [0, 0, 0]
        elif len(numbers) == 1:
            limits = numbers * 3
        elif len(numbers) == 3:
            limits = numbers
        else:
            return _incomplete(b"maxqueue")
        self.engine.set_max_queue(args[0], limits)
        return OK

    def _status(self) -> bytes:
        out = []
        for name, function in self.engine.functions.items():
            total = function.total_queued + function.running + function.scheduled
            out.append(b"%s\t%d\t%d\t%d\n" % (name, total, function.running, len(function.workers)))
        out.append(b".\n")
        return b"".join(out)

    def _priority_status(self) -> bytes:
        out = []
        for name, function in self.engine.functions.items():
            high, normal, low = function.queued
            out.append(b"%s\t%d\t%d\t%d\t%d\n" % (name, high, normal, low, len(function.workers)))
        out.append(b".\n")
        return b"".join(out)

    def _workers(self) -> bytes:
        out = []
        for session in self.engine.sessions:
            peer = session.peer
            fd = getattr(peer, "fd", -1)
            names = b"".join(b" " + function.name for function in session.order)
            out.append(
                b"%d %s %s :%s\n" % (fd, session.peer_name.encode(), session.client_id, names)
            )
        out.append(b".\n")
        return b"".join(out)

    def _show_jobs(self) -> bytes:
        out = []
        for handle, job in self.engine.jobs.items():
            if job.state == JobState.PENDING:
                continue
            # gearmand's JOB_QUEUED column is 1 for every background job
            out.append(b"%s\t%d\t0\t%d\n" % (handle, job.failures, 1 if job.background else 0))
        out.append(b".\n")
        return b"".join(out)

    def _show_unique(self) -> bytes:
        out = [
            job.unique + b"\n"
            for job in self.engine.jobs.values()
            if job.unique and job.state != JobState.PENDING
        ]
        out.append(b".\n")
        return b"".join(out)
