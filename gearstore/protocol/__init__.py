"""The Gearman wire protocol, sans-IO: no sockets, no asyncio."""

from gearstore.protocol.codec import (
    DEFAULT_MAX_PACKET,
    Decoder,
    encode,
    encode_error,
    encode_request,
    encode_response,
)
from gearstore.protocol.packets import (
    REQ,
    RES,
    SPECS,
    AdminLine,
    Event,
    Packet,
    PacketType,
    ProtocolViolation,
    Sender,
)

__all__ = [
    "DEFAULT_MAX_PACKET",
    "REQ",
    "RES",
    "SPECS",
    "AdminLine",
    "Decoder",
    "Event",
    "Packet",
    "PacketType",
    "ProtocolViolation",
    "Sender",
    "encode",
    "encode_error",
    "encode_request",
    "encode_response",
]
