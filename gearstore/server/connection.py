"""One connection: decodes bytes, turns packets into engine calls, writes replies.

Replies are buffered per connection and written once per event-loop turn (see
:meth:`Server.mark_dirty`), so a burst of packets costs one write, not one per packet.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from gearstore.engine.core import SubmitError
from gearstore.engine.model import GrabMode, Session
from gearstore.protocol.codec import Decoder, encode_response
from gearstore.protocol.packets import AdminLine, Packet, ProtocolViolation
from gearstore.protocol.packets import PacketType as T
from gearstore.stores.base import Priority

if TYPE_CHECKING:
    from gearstore.server.server import Server

log = logging.getLogger("gearstore.connection")

_SUBMITS: dict[int, tuple[Priority, bool]] = {
    T.SUBMIT_JOB: (Priority.NORMAL, False),
    T.SUBMIT_JOB_HIGH: (Priority.HIGH, False),
    T.SUBMIT_JOB_LOW: (Priority.LOW, False),
    T.SUBMIT_JOB_BG: (Priority.NORMAL, True),
    T.SUBMIT_JOB_HIGH_BG: (Priority.HIGH, True),
    T.SUBMIT_JOB_LOW_BG: (Priority.LOW, True),
}


class Connection(asyncio.Protocol):
    """asyncio protocol for one Gearman peer (client, worker, or admin tool)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.engine = server.engine
        self.decoder = Decoder(max_packet=server.config.max_packet)
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.out: list[bytes] = []
        self.fd = -1
        self.host = "-"
        self.loopback = False
        self.closing = False
        self._handlers: dict[int, Callable[[Session, tuple[bytes, ...]], object]] = {
            T.CAN_DO: self._can_do,
            T.CANT_DO: lambda s, a: self.engine.cant_do(s, a[0]),
            T.RESET_ABILITIES: lambda s, a: self.engine.reset_abilities(s),
            T.PRE_SLEEP: lambda s, a: self.engine.pre_sleep(s),
            T.GRAB_JOB: lambda s, a: self.engine.grab(s, GrabMode.PLAIN),
            T.GRAB_JOB_UNIQ: lambda s, a: self.engine.grab(s, GrabMode.UNIQ),
            T.GRAB_JOB_ALL: lambda s, a: self.engine.grab(s, GrabMode.ALL),
            T.WORK_STATUS: lambda s, a: self.engine.work_status(s, a[0], a[1], a[2]),
            T.WORK_DATA: lambda s, a: self.engine.work_update(s, T.WORK_DATA, a[0], a[1]),
            T.WORK_WARNING: lambda s, a: self.engine.work_update(s, T.WORK_WARNING, a[0], a[1]),
            T.WORK_COMPLETE: lambda s, a: self.engine.work_complete(s, a[0], a[1]),
            T.WORK_FAIL: lambda s, a: self.engine.work_fail(s, a[0]),
            T.WORK_EXCEPTION: lambda s, a: self.engine.work_exception(s, a[0], a[1]),
            T.GET_STATUS: lambda s, a: self.engine.get_status(s, a[0]),
            T.GET_STATUS_UNIQUE: lambda s, a: self.engine.get_status_unique(s, a[0]),
            T.ECHO_REQ: lambda s, a: self.send(T.ECHO_RES, a[0]),
            T.SET_CLIENT_ID: lambda s, a: self.engine.set_client_id(s, a[0]),
            T.CAN_DO_TIMEOUT: self._can_do_timeout,
            T.ALL_YOURS: lambda s, a: None,
            T.OPTION_REQ: self._option,
            T.SUBMIT_JOB_EPOCH: self._submit_epoch,
            T.SUBMIT_REDUCE_JOB: functools.partial(self._submit_reduce, False),
            T.SUBMIT_REDUCE_JOB_BACKGROUND: functools.partial(self._submit_reduce, True),
            T.SUBMIT_JOB_SCHED: self._submit_sched,
        }
        for ptype, (priority, background) in _SUBMITS.items():
            self._handlers[ptype] = functools.partial(self._submit, priority, background)

    # -------------------------------------------------------------- transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register with the engine."""
        # uvloop's transports implement the interface without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        if isinstance(peer, tuple):
            self.host = str(peer[0])
            self.loopback = self.host.startswith("127.") or self.host in ("::1", "::ffff:127.0.0.1")
        self.server.configure_socket(self.transport)
        self.session = self.engine.connect(self, self.host)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Hand running jobs back; forget the session."""
        self.closing = True
        self.server.connections.discard(self)
        if self.session is not None:
            self.engine.disconnect(self.session)
            self.session = None

    def data_received(self, data: bytes) -> None:
        """Decode and dispatch every complete packet or admin line."""
        session = self.session
        if session is None:
            return
        handlers = self._handlers
        for event in self.decoder.feed(data):
            if type(event) is Packet:
                handler = handlers.get(event.type)
                if handler is None:
                    self.send(T.ERROR, b"INVALID_COMMAND", b"Command not expected")
                    continue
                try:
                    handler(session, event.args)
                except Exception:
                    log.exception("error handling packet %d from %s", event.type, self.host)
                    self.send(T.ERROR, b"SERVER_ERROR", b"internal error handling the packet")
            elif type(event) is AdminLine:
                self.server.admin.handle(self, event.text)
            else:
                assert isinstance(event, ProtocolViolation)
                self.send(T.ERROR, event.code, event.message)
                if event.fatal:
                    log.info("closing %s: %s", self.host, event.message.decode(errors="replace"))
                    self.close_after_flush()
                    return
            if self.closing:
                return

    def send(self, ptype: int, *args: bytes) -> None:
        """Engine's Peer interface: buffer one packet for this turn's write."""
        if self.closing:
            return
        if not self.out:
            self.server.mark_dirty(self)
        self.out.append(encode_response(ptype, *args))

    def write_raw(self, data: bytes) -> None:
        """Buffer text (admin replies)."""
        if self.closing:
            return
        if not self.out:
            self.server.mark_dirty(self)
        self.out.append(data)

    def flush(self) -> None:
        """Write everything buffered in one call."""
        out = self.out
        if out and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        self.out = []

    def close_after_flush(self) -> None:
        """Stop reading; close once buffered replies are written."""
        self.flush()
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        """The peer is not reading its replies: stop reading its requests meanwhile."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        """The peer caught up."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # --------------------------------------------------------------- handlers

    def _submit(
        self, priority: Priority, background: bool, session: Session, args: tuple[bytes, ...]
    ) -> None:
        try:
            self.engine.submit(session, args[0], args[1], args[2], priority, background)
        except SubmitError as exc:
            self.send(T.ERROR, exc.code, exc.message)

    def _do_submit(
        self,
        session: Session,
        function: bytes,
        unique: bytes,
        data: bytes,
        priority: Priority,
        background: bool,
        when: int | None = None,
        reducer: bytes | None = None,
    ) -> None:
        try:
            self.engine.submit(session, function, unique, data, priority, background, when, reducer)
        except SubmitError as exc:
            self.send(T.ERROR, exc.code, exc.message)

    def _submit_epoch(self, session: Session, args: tuple[bytes, ...]) -> None:
        try:
            when = int(args[2])
        except ValueError:
            self.send(T.ERROR, b"INVALID_ARGUMENTS", b"epoch time is not an integer")
            return
        self._do_submit(session, args[0], args[1], args[3], Priority.NORMAL, True, when)

    def _submit_reduce(self, background: bool, session: Session, args: tuple[bytes, ...]) -> None:
        # args: function, unique, reducer, aggregator, data
        self._do_submit(
            session, args[0], args[1], args[4], Priority.NORMAL, background, None, args[2]
        )

    def _submit_sched(self, session: Session, args: tuple[bytes, ...]) -> None:
        self.send(
            T.ERROR,
            b"NOT_SUPPORTED",
            b"SUBMIT_JOB_SCHED is deprecated and not supported; use SUBMIT_JOB_EPOCH",
        )

    def _can_do(self, session: Session, args: tuple[bytes, ...]) -> None:
        self.engine.can_do(session, args[0])

    def _can_do_timeout(self, session: Session, args: tuple[bytes, ...]) -> None:
        try:
            timeout = int(args[1] or b"0")
        except ValueError:
            self.send(T.ERROR, b"INVALID_ARGUMENTS", b"CAN_DO_TIMEOUT needs a whole number")
            return
        self.engine.can_do(session, args[0], timeout)

    def _option(self, session: Session, args: tuple[bytes, ...]) -> None:
        if args[0] == b"exceptions":
            session.exceptions = True
            self.send(T.OPTION_RES, args[0])
        else:
            self.send(T.ERROR, b"UNKNOWN_OPTION", b"Server does not recognize given option")
