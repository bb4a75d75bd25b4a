"""Sans-IO Gearman codec: bytes in, events out; events in, bytes out.

:class:`Decoder` accepts any chunking of the byte stream (many packets per read, a
packet split over many reads) and interleaved text admin lines (a line whose first byte
is not NUL). It never raises on peer input: bad input becomes a
:class:`~gearstore.protocol.packets.ProtocolViolation` event, which tells the caller
whether the stream can continue.
"""

from __future__ import annotations

import struct
from typing import Final

from gearstore.protocol.packets import (
    ARGC,
    HEADER_SIZE,
    REQ,
    RES,
    AdminLine,
    Event,
    Packet,
    PacketType,
    ProtocolViolation,
)

DEFAULT_MAX_PACKET: Final = 64 * 1024 * 1024
MAX_ADMIN_LINE: Final = 64 * 1024

_HEADER = struct.Struct(">4sII")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from


def encode(magic: bytes, ptype: int, *args: bytes) -> bytes:
    """Encode one packet. Only the last argument may contain NUL bytes."""
    payload = b"\0".join(args)
    return _pack_header(magic, ptype, len(payload)) + payload


def encode_response(ptype: int, *args: bytes) -> bytes:
    """Encode a server-to-peer packet (``\\0RES``)."""
    payload = b"\0".join(args)
    return _pack_header(RES, ptype, len(payload)) + payload


def encode_request(ptype: int, *args: bytes) -> bytes:
    """Encode a peer-to-server packet (``\\0REQ``)."""
    payload = b"\0".join(args)
    return _pack_header(REQ, ptype, len(payload)) + payload


def encode_error(code: bytes, message: bytes) -> bytes:
    """Encode an ERROR packet."""
    return encode_response(PacketType.ERROR, code, message)


class Decoder:
    """Incremental decoder for one byte stream.

    ``expect`` is the magic the peer must use (REQ for a server, RES for a client);
    a packet with the other valid magic is reported (non-fatal) and skipped.
    ``max_packet`` bounds a payload: a larger size is refused from the header alone,
    before any of the payload is buffered.
    """

    __slots__ = ("_buf", "_closed", "expect", "max_packet")

    def __init__(self, expect: bytes = REQ, max_packet: int = DEFAULT_MAX_PACKET) -> None:
        self.expect = expect
        self.max_packet = max_packet
        self._buf = bytearray()
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        """Add bytes from the peer and return every complete event they finish.

        After a fatal violation the decoder stops and ignores further input.
        """
        if self._closed:
            return []
        buf = self._buf
        buf += data
        events: list[Event] = []
        pos = 0
        end = len(buf)
        argc_table = ARGC
        n_types = len(argc_table)
        while pos < end:
            if buf[pos] != 0:  # a text admin line
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if end - pos > MAX_ADMIN_LINE:
                        events.append(self._fatal(b"ARGUMENT_TOO_LARGE", b"admin line too long"))
                        return events
                    break
                line = bytes(buf[pos:nl])
                pos = nl + 1
                events.append(AdminLine(line[:-1] if line.endswith(b"\r") else line))
                continue
            if end - pos < HEADER_SIZE:
                if end - pos >= 4 and bytes(buf[pos : pos + 4]) not in (REQ, RES):
                    events.append(self._bad_magic())
                    return events
                break
            magic, ptype, size = _unpack_header(buf, pos)
            if magic != REQ and magic != RES:
                events.append(self._bad_magic())
                return events
            if size > self.max_packet:
                events.append(
                    self._fatal(
                        b"ARGUMENT_TOO_LARGE",
                        b"packet of %d bytes exceeds the %d-byte limit" % (size, self.max_packet),
                    )
                )
                return events
            stop = pos + HEADER_SIZE + size
            if stop > end:
                break
            payload = bytes(buf[pos + HEADER_SIZE : stop])
            pos = stop
            if magic != self.expect:
                text = b"Request magic expected" if self.expect == REQ else b"Response expected"
                events.append(ProtocolViolation(b"INVALID_MAGIC", text, False))
                continue
            argc = argc_table[ptype] if ptype < n_types else -1
            if argc < 0:
                events.append(
                    ProtocolViolation(b"INVALID_COMMAND", b"Unknown packet type %d" % ptype, False)
                )
                continue
            if argc == 0:
                events.append(Packet(magic, ptype, ()))
            elif argc == 1:
                events.append(Packet(magic, ptype, (payload,)))
            else:
                args = payload.split(b"\0", argc - 1)
                if len(args) != argc:
                    events.append(
                        ProtocolViolation(
                            b"INVALID_ARGUMENTS",
                            b"%s needs %d arguments, got %d" % (_name(ptype), argc, len(args)),
                            False,
                        )
                    )
                    continue
                events.append(Packet(magic, ptype, tuple(args)))
        if pos:
            del buf[:pos]
        return events

    def _bad_magic(self) -> ProtocolViolation:
        return self._fatal(b"INVALID_MAGIC", b"Packet magic must be \\0REQ or \\0RES")

    def _fatal(self, code: bytes, message: bytes) -> ProtocolViolation:
        self._closed = True
        self._buf.clear()
        return ProtocolViolation(code, message, True)


def _name(ptype: int) -> bytes:
    try:
        return PacketType(ptype).name.encode()
    except ValueError:
        return b"packet %d" % ptype
